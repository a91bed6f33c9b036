/* request_list: the seed's request_list.txt, what the clients replay.
 *
 *   model_name, batch_size, send_interval
 *   resnet152, 8, 0.100000
 *
 * The first line is the header and must be it (a first line that parses as
 * a request would silently drop it, as deploy_file's lists refuse too);
 * blank lines and lines starting with '#' are skipped; any other deviation
 * is an error naming file:line. send_interval is the pause in seconds
 * before the next request (open loop; closed loops ignore it). */
#ifndef PIPEPS_REQUEST_LIST_H
#define PIPEPS_REQUEST_LIST_H

#include <stddef.h>

#define REQUEST_MODEL_MAX 255

struct request_row {
    char model[REQUEST_MODEL_MAX + 1];
    int batch;                 /* 1..1<<20 */
    double interval_s;         /* >= 0 */
};

struct request_list {
    struct request_row *rows;
    int n;
};

/* Parse text (len bytes) named name (for messages). 0, or PPS_EINVAL with
 * "name:line: why" in err. The caller frees with request_list_free. */
int request_list_parse(const char *text, size_t len, const char *name, struct request_list *out, char *err,
                       size_t errlen);
int request_list_read(const char *path, struct request_list *out, char *err, size_t errlen);
void request_list_free(struct request_list *l);

#endif
