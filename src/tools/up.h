/* up: `pipeps up [CLUSTER_FILE] [--host NAME] [--dir DIR]` starts a whole
 * cluster (metadata storage, storages, load balancer, machines of a cache and
 * servers) described by one small cluster file, or by a built-in default;
 * `pipeps down [--dir DIR]` stops what `up` started. The daemons are the
 * links next to this binary; their pids and shared-memory names are kept in
 * DIR/state-HOST files. */
#ifndef PIPEPS_UP_H
#define PIPEPS_UP_H

int up_main(int argc, char **argv);
int down_main(int argc, char **argv);

#endif
