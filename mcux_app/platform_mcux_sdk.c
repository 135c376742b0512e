/* MCUXpresso SDK platform for the generated main.c: the board's pins, clocks and debug console (UART, or
 * semihosting when the project selects the SDK's Semihost console), cycles from the DWT cycle counter.
 * MCUX_BOARD_INIT (set by the generated CMakeLists.txt from boards/<board>.toml [mcux] init) is the board's
 * init sequence, e.g. BOARD_ConfigMPU(), BOARD_InitBootPins(), BOARD_InitBootClocks(), BOARD_InitDebugConsole(). */
#include "board.h"
#include "clock_config.h"
#include "fsl_debug_console.h"
#include "fsl_device_registers.h"
#include "pin_mux.h"

#include "platform.h"

static uint32_t last_count;
static uint32_t wraps;

void platform_init(void)
{
    MCUX_BOARD_INIT;
    CoreDebug->DEMCR |= CoreDebug_DEMCR_TRCENA_Msk;
    DWT->CYCCNT = 0u;
    DWT->CTRL |= DWT_CTRL_CYCCNTENA_Msk;
}

void platform_write(const char *text)
{
    PRINTF("%s", text);
}

/* CYCCNT is 32 bits (7 s at 600 MHz): count its wraps, seen as a smaller value than the previous read. */
uint64_t platform_cycles(void)
{
    uint32_t count = DWT->CYCCNT;
    if (count < last_count) {
        ++wraps;
    }
    last_count = count;
    return ((uint64_t)wraps << 32) | count;
}

uint32_t platform_cycles_hz(void)
{
    return SystemCoreClock;
}

int platform_next_image(uint8_t *dst, uint32_t size)
{
    (void)dst;
    (void)size;
    return 0;
}

void platform_exit(int status)
{
    PRINTF("Exit status %d\r\n", status);
    for (;;) {
    }
}
