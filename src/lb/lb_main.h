/* lb_main: the `load_balancer` command line (README "load_balancer"). */
#ifndef PIPEPS_LB_MAIN_H
#define PIPEPS_LB_MAIN_H

int load_balancer_main(int argc, char **argv);

#endif
