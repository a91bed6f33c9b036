/* repack_cmd: `pipeps repack IN_KV OUT_KV`, which rewrites every model of a
 * kv.bin into the native parameter format of the machine it runs on (see
 * prepack.h): portable models are prepared, models prepared for another
 * target are re-prepared, models already native here come out unchanged. */
#ifndef PIPEPS_EXEC_REPACK_CMD_H
#define PIPEPS_EXEC_REPACK_CMD_H

int repack_main(int argc, char **argv);

#endif
