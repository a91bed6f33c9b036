/* prom: see prom.h. Everything appends to the caller's wbuf (which aborts
 * on out-of-memory, like every small internal allocation), so a render
 * function never has a failure path to unwind while it holds its daemon's
 * lock. */
#include "http/prom.h"
#include "common/err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double prom_latency_bounds[PROM_LATENCY_NBOUNDS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

static const char *const type_names[] = {"counter", "gauge", "histogram"};

static int name_char(char c, int first, int colon_ok)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
        return 1;
    if (c == ':')
        return colon_ok;
    return !first && c >= '0' && c <= '9';
}

static int ident_valid(const char *s, int colon_ok)
{
    if (!s || !*s)
        return 0;
    for (size_t i = 0; s[i]; i++)
        if (!name_char(s[i], i == 0, colon_ok))
            return 0;
    return 1;
}

int prom_name_valid(const char *name) { return ident_valid(name, 1); }

static void put_str(struct wbuf *out, const char *s) { wbuf_put(out, s, strlen(s)); }

/* HELP text escapes backslash and newline; label values also the quote. */
static void put_escaped(struct wbuf *out, const char *s, int quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = NULL;
        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '\n')
            rep = "\\n";
        else if (quote && *s == '"')
            rep = "\\\"";
        if (rep) {
            wbuf_put(out, run, (size_t)(s - run));
            put_str(out, rep);
            run = s + 1;
        }
    }
    wbuf_put(out, run, (size_t)(s - run));
}

void prom_head(struct wbuf *out, const char *name, enum prom_type type, const char *help)
{
    PPS_ASSERT(prom_name_valid(name));
    PPS_ASSERT(type >= PROM_COUNTER && type <= PROM_HISTOGRAM);
    put_str(out, "# HELP ");
    put_str(out, name);
    wbuf_u8(out, ' ');
    put_escaped(out, help ? help : "", 0);
    put_str(out, "\n# TYPE ");
    put_str(out, name);
    wbuf_u8(out, ' ');
    put_str(out, type_names[type]);
    wbuf_u8(out, '\n');
}

/* name[suffix]{labels[,le="le"]} value\n */
static void sample(struct wbuf *out, const char *name, const char *suffix,
                   const struct prom_label *labels, int nlabels, const char *le,
                   const char *value)
{
    PPS_ASSERT(prom_name_valid(name));
    PPS_ASSERT(nlabels >= 0);
    put_str(out, name);
    if (suffix)
        put_str(out, suffix);
    if (nlabels > 0 || le) {
        wbuf_u8(out, '{');
        for (int i = 0; i < nlabels; i++) {
            PPS_ASSERT(ident_valid(labels[i].name, 0) && strcmp(labels[i].name, "le") != 0);
            if (i)
                wbuf_u8(out, ',');
            put_str(out, labels[i].name);
            put_str(out, "=\"");
            put_escaped(out, labels[i].value ? labels[i].value : "", 1);
            wbuf_u8(out, '"');
        }
        if (le) {
            if (nlabels > 0)
                wbuf_u8(out, ',');
            put_str(out, "le=\"");
            put_str(out, le);
            wbuf_u8(out, '"');
        }
        wbuf_u8(out, '}');
    }
    wbuf_u8(out, ' ');
    put_str(out, value);
    wbuf_u8(out, '\n');
}

static void format_u64(char *buf, size_t n, uint64_t v)
{
    snprintf(buf, n, "%llu", (unsigned long long)v);
}

/* The shortest of %.15g / %.16g / %.17g that parses back to v. */
static void format_f64(char *buf, size_t n, double v)
{
    if (isnan(v)) {
        snprintf(buf, n, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, n, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

void prom_u64(struct wbuf *out, const char *name, const struct prom_label *labels, int nlabels,
              uint64_t value)
{
    char v[32];
    format_u64(v, sizeof v, value);
    sample(out, name, NULL, labels, nlabels, NULL, v);
}

void prom_f64(struct wbuf *out, const char *name, const struct prom_label *labels, int nlabels,
              double value)
{
    char v[40];
    format_f64(v, sizeof v, value);
    sample(out, name, NULL, labels, nlabels, NULL, v);
}

void prom_metric_u64(struct wbuf *out, enum prom_type type, const char *name, const char *help,
                     uint64_t value)
{
    prom_head(out, name, type, help);
    prom_u64(out, name, NULL, 0, value);
}

void prom_metric_f64(struct wbuf *out, enum prom_type type, const char *name, const char *help,
                     double value)
{
    prom_head(out, name, type, help);
    prom_f64(out, name, NULL, 0, value);
}

/* ---- histograms ---- */

void prom_hist_init(struct prom_hist *h, const double *bounds, int nbounds)
{
    if (!bounds) {
        bounds = prom_latency_bounds;
        nbounds = PROM_LATENCY_NBOUNDS;
    }
    PPS_ASSERT(nbounds >= 1 && nbounds <= PROM_HIST_MAX_BOUNDS);
    for (int i = 1; i < nbounds; i++)
        PPS_ASSERT(bounds[i] > bounds[i - 1]);
    h->bounds = bounds;
    h->nbounds = nbounds;
    for (int i = 0; i <= PROM_HIST_MAX_BOUNDS; i++)
        atomic_init(&h->counts[i], 0);
    atomic_init(&h->sum_nano, 0);
}

void prom_hist_observe(struct prom_hist *h, double value)
{
    if (!(value > 0)) /* negative or NaN */
        value = 0;
    int i = 0;
    while (i < h->nbounds && value > h->bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    double nano = value * 1e9;
    uint64_t add = nano < 1.8e19 ? (uint64_t)(nano + 0.5) : UINT64_MAX;
    atomic_fetch_add_explicit(&h->sum_nano, add, memory_order_relaxed);
}

void prom_hist_write(struct wbuf *out, const char *name, const struct prom_label *labels,
                     int nlabels, const struct prom_hist *h)
{
    char le[40], v[32];
    uint64_t cum = 0;
    for (int i = 0; i <= h->nbounds; i++) {
        cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        if (i < h->nbounds)
            format_f64(le, sizeof le, h->bounds[i]);
        else
            snprintf(le, sizeof le, "+Inf");
        format_u64(v, sizeof v, cum);
        sample(out, name, "_bucket", labels, nlabels, le, v);
    }
    double sum = (double)atomic_load_explicit(&h->sum_nano, memory_order_relaxed) / 1e9;
    format_f64(v, sizeof v, sum);
    sample(out, name, "_sum", labels, nlabels, NULL, v);
    format_u64(v, sizeof v, cum);
    sample(out, name, "_count", labels, nlabels, NULL, v);
}
