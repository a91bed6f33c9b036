/* commands: the subcommands of the multi-call program. Each entry names the
 * command, its main function (declared in its module's header, included
 * below) and a one-line summary. Add a line when a module lands. */
#ifndef PIPEPS_COMMANDS_H
#define PIPEPS_COMMANDS_H

#define PIPEPS_COMMANDS(X)                                                    \
    X("version", version_main, "print the version")                          \
    X("bench", bench_cmd_main, "run the experiments on local clusters: CSV, PNG plot, Markdown table each") \
    X("inspect", inspect_main, "list the models and keys of a kv.bin file")   \
    X("metadata_storage", metadata_storage_main, "key-value server for metadata (durable log)") \
    X("meta", meta_cli_main, "metadata storage client: get/put/delete/list") \
    X("generate_file", generate_file_main, "build the model list's models and write kv.bin") \
    X("model", model_cli_main, "show a built-in model's graph, batches and METADATA blob") \
    X("import", import_main, "what the ONNX importer makes of a .onnx file: inputs, outputs, op types, servable or not") \
    X("stat", stat_main, "print a running daemon's counters") \
    X("cache-get", cache_get_main, "subscribe to a model at a cache (a server stand-in)") \
    X("storage", storage_main, "bulk parameter store daemon: storage PORT [--dir DIR]") \
    X("cache", cache_main, "the per-machine shared-memory parameter cache") \
    X("deploy_file", deploy_file_main, "push kv.bin's models to the storages and publish them") \
    X("fetch", fetch_main, "read a deployed model back through its location record") \
    X("gc", gc_main, "delete deploy generations no location record references") \
    X("run", run_main, "run a model from kv.bin on the CPU executor (latency, output .npy)") \
    X("repack", repack_main, "rewrite a kv.bin's models into this machine's native parameter format") \
    X("server", server_main, "the inference server (pipelined model loading)") \
    X("infer", infer_main, "send inference requests to a server, print timings") \
    X("load_balancer", load_balancer_main, "the cluster's front door: places requests on servers, steers caches") \
    X("client_one", client_one_main, "replay a request list, one request at a time (closed loop)") \
    X("client", client_main, "replay a request list on its schedule (open loop)") \
    X("client_concurrent", client_concurrent_main, "replay a request list with N closed loops") \
    X("workload", workload_main, "write a request list: loop or Zipf popularity, uniform or Poisson arrivals") \
    X("up", up_main, "start a whole cluster from a cluster file (or the built-in one)") \
    X("down", down_main, "stop the cluster `pipeps up` started")

int version_main(int argc, char **argv);
#include "tools/bench_cmd.h"
#include "deploy/inspect.h"
#include "model/generate.h"
#include "model/model_cli.h"
#include "storage/storage_server.h"

#include "metadata/meta_cli.h"
#include "metadata/meta_server.h"
#include "deploy/deploy.h"
#include "deploy/fetch.h"
#include "deploy/gc.h"
#include "server/infer_client.h"
#include "server/server.h"
#include "lb/lb_main.h"
#include "client/client.h"
#include "client/workload.h"

int stat_main(int argc, char **argv);
#include "cache/cache_main.h"
#include "cache/cache_tool.h"
#include "exec/repack_cmd.h"
#include "exec/run_cmd.h"
#include "tools/up.h"
#include "tools/import_cmd.h"

#endif
