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

static platform_counter cycle_counter;

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

uint64_t platform_cycles(void)
{
    return platform_counter_extend(&cycle_counter, DWT->CYCCNT);
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
