/* pipeps: the multi-call program. Every PipePS program is a subcommand of
 * this one binary; build/bin also holds links named after the seed's
 * programs (storage, metadata_storage, deploy_file, ...), and invoking a link
 * runs that subcommand. Each subcommand's main lives in its own module; this
 * file only dispatches. */
#include "common/log.h"

#include <stdio.h>
#include <string.h>

#include "tools/commands.h"

struct command {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
#define PIPEPS_COMMAND_ENTRY(name, fn, summary) {name, fn, summary},
    PIPEPS_COMMANDS(PIPEPS_COMMAND_ENTRY)
#undef PIPEPS_COMMAND_ENTRY
};

static void usage(FILE *out)
{
    fprintf(out, "usage: pipeps COMMAND [ARGS...]   (or run a link named after COMMAND)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-18s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nEach command takes --help.\n");
}

static const struct command *find(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    const struct command *cmd = find(base);
    if (cmd) {
        log_init(cmd->name);
        return cmd->main(argc, argv);
    }
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    cmd = find(argv[1]);
    if (!cmd) {
        fprintf(stderr, "pipeps: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
        return 2;
    }
    log_init(cmd->name);
    return cmd->main(argc - 1, argv + 1);
}
