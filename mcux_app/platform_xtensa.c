/* HiFi4 (Xtensa) platform for the generated main.c, built with xt-clang for the core's newlib LSP: console on
 * the C library's stdout (the EVK's semihosted console under the debugger, or xt-run's), cycles from CCOUNT. */
#include <stdio.h>
#include <stdlib.h>

#include "platform.h"

#ifndef BOARD_CPU_HZ
#error "define BOARD_CPU_HZ (the core clock in Hz, boards/<board>.toml cpu_hz)"
#endif

static platform_counter cycle_counter;

void platform_init(void)
{
}

void platform_write(const char *text)
{
    fputs(text, stdout);
    fflush(stdout);
}

uint64_t platform_cycles(void)
{
    uint32_t count;
    __asm__ volatile("rsr.ccount %0" : "=a"(count));
    return platform_counter_extend(&cycle_counter, count);
}

uint32_t platform_cycles_hz(void)
{
    return BOARD_CPU_HZ;
}

int platform_next_image(uint8_t *dst, uint32_t size)
{
    (void)dst;
    (void)size;
    return 0;
}

void platform_exit(int status)
{
    exit(status);
}
