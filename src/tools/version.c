/* version: `pipeps version`. */
#include "tools/commands.h"

#include <stdio.h>

int version_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("pipeps 0.1.0 (wire protocol version 1)\n");
    return 0;
}
