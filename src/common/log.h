/* log: leveled logging to stderr, one line per event.
 *
 * Lines look like "2026-11-26T08:30:01.123Z storage[1234] WARN  message".
 * The level comes from log_set_level() or, at log_init(), from the
 * PIPEPS_LOG environment variable (debug, info, warn, error). Thread-safe:
 * each line is written with one write(2). */
#ifndef PIPEPS_LOG_H
#define PIPEPS_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

/* Name the program for log lines and read PIPEPS_LOG. */
void log_init(const char *program_name);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parse "debug"/"info"/"warn"/"error"/"off"; returns 0 or PPS_EINVAL. */
int log_parse_level(const char *text, enum log_level *out);

void log_write(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
