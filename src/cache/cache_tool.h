/* cache_tool: `pipeps cache-get ADDR:PORT MODEL [--dump DIR] [--hold MS]`,
 * a command-line server stand-in built on cache_client: subscribe to a
 * model, print each event with its time since the request, optionally
 * write the model's bytes out of the shared pool (DIR/metadata,
 * DIR/batch-<i>), then unpin. Used by the tests and benchmarks, and handy
 * for looking at a running cache. */
#ifndef PIPEPS_CACHE_TOOL_H
#define PIPEPS_CACHE_TOOL_H

int cache_get_main(int argc, char **argv);

#endif
