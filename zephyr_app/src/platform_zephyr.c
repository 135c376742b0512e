/* Zephyr platform for the generated main.c (mcux_app/platform.h): console by printk, cycles by Zephyr's timing
 * API. Only the built-in test image runs: there is no host file system here. */
#include <zephyr/kernel.h>
#include <zephyr/sys/printk.h>
#include <zephyr/timing/timing.h>

#include "platform.h"

static timing_t origin;

void platform_init(void)
{
    timing_init();
    timing_start();
    origin = timing_counter_get();
}

void platform_write(const char *text)
{
    printk("%s", text);
}

uint64_t platform_cycles(void)
{
    timing_t now = timing_counter_get();
    return timing_cycles_get(&origin, &now);
}

uint32_t platform_cycles_hz(void)
{
    return (uint32_t)timing_freq_get();
}

int platform_next_image(uint8_t *dst, uint32_t size)
{
    (void)dst;
    (void)size;
    return 0;
}

void platform_exit(int status)
{
    printk("Exit status %d\n", status);
}
