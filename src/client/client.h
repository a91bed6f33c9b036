/* client: the seed's clients, replaying a request list against a load
 * balancer (or any server: they speak the same INFER messages).
 *
 *   client_one REQUEST_LIST LB_ADDR LB_PORT         closed loop, one at a time
 *   client REQUEST_LIST LB_ADDR LB_PORT             open loop on a fixed schedule
 *   client_concurrent N REQUEST_LIST LB_ADDR LB_PORT  N closed loops sharing the list
 *
 * Inputs are built once per (model, batch) from the model's input spec
 * (MODEL_INFO), deterministic in --seed, or read with --input / --input-dir.
 * Each answer is printed as one line (id, model, batch, latency, the server
 * that ran it, where the parameters came from), then a summary; --csv,
 * --dump-dir and --quiet as documented in README "Clients". */
#ifndef PIPEPS_CLIENT_H
#define PIPEPS_CLIENT_H

int client_one_main(int argc, char **argv);
int client_main(int argc, char **argv);
int client_concurrent_main(int argc, char **argv);

#endif
