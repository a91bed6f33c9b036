/* storage_server: the `storage` daemon, the bulk parameter store.
 *
 *   storage PORT [--dir DIR] [--addr ADDR] [--file-size SIZE]
 *           [--compact-ratio R] [--io-timeout SECONDS] [--max-conns N]
 *           [--sockbuf SIZE] [--send-path mmap|sendfile] [--metrics-port PORT]
 *
 * Serves STORE_PUT/GET/DELETE/STAT (docs/protocol.md) over the store
 * engine (store.h). memcached-style threading: the main thread accepts and
 * hands each connection to its own thread doing blocking I/O, so a slow
 * reader stalls nobody but itself. PUT values stream from the socket into
 * the data file through one bounded buffer; GET ranges go from the data
 * file to the socket without a user-space copy: send() from a read-only
 * mapping of the file (default; measured faster on loopback, see
 * bench_send_path) or sendfile(2). */
#ifndef PIPEPS_STORAGE_SERVER_H
#define PIPEPS_STORAGE_SERVER_H

int storage_main(int argc, char **argv);

#endif
