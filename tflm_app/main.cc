/* The same classification as mcux_app/main.c.j2, run by TensorFlow Lite Micro with CMSIS-NN kernels on the
 * .tflite of the same int8 graph (pipeline/firmware/tflm.py builds it against the user's TFLM_ROOT tree).
 *
 * tflm_model.h is generated from build/model/<name>_int8.tflite: the model bytes, the ops it uses (an X-macro,
 * so the resolver holds exactly those), the arena size TFLM's host interpreter needed for it, the test image as
 * the model's input tensor bytes and the labels. The console block per image is the bundle firmware's
 * (mcux_app/console.h), so pipeline/firmware/emulator.py reads both; "Arena used" is TFLM's own count. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "platform.h"
#include "console.h"

/* Where the large buffers go is the board's linker script's choice (boards/<board>.toml [firmware.placement]). */
#define NN_WEIGHTS_SECTION __attribute__((section(".nn_weights")))
#define NN_ACTIVATIONS_SECTION __attribute__((section(".nn_activations")))

#include "tflm_model.h"

alignas(16) NN_ACTIVATIONS_SECTION static uint8_t tensor_arena[TFLM_ARENA_BYTES];

static void log_to_console(const char *text)
{
    platform_write(text);
}

/* TFLM's assert()s end here instead of in newlib's, which would pull in stdio and malloc. */
extern "C" void __assert_func(const char *file, int line, const char *function, const char *expression)
{
    (void)function;
    platform_write("Assertion failed: ");
    platform_write(expression);
    platform_write(" at ");
    platform_write(file);
    platform_write(":");
    print_uint((uint32_t)line);
    platform_write("\r\n");
    platform_exit(3);
    for (;;) {
    }
}

/* No heap: TFLM allocates from its arena. newlib's vsnprintf (TFLM's log formatting) links malloc, which finds
 * no memory here and is never needed for the short messages it formats into a caller's buffer. */
extern "C" void *_sbrk(ptrdiff_t increment)
{
    (void)increment;
    return (void *)-1;
}

static int fail(const char *what)
{
    platform_write(what);
    platform_write("\r\n");
    return 2;
}

/* The logits as floats: an int8 output is dequantized (exact: its scale is a power of two). */
static void output_logits(const TfLiteTensor *output, float *logits)
{
    for (int i = 0; i < NUM_CLASSES; ++i) {
        logits[i] = output->type == kTfLiteInt8
                        ? (float)(output->data.int8[i] - output->params.zero_point) * output->params.scale
                        : output->data.f[i];
    }
}

int main(void)
{
    platform_init();
    RegisterDebugLogCallback(log_to_console);
    platform_write(TFLM_TITLE "\r\n");

    const tflite::Model *model = tflite::GetModel(tflm_model);
    if (model->version() != TFLITE_SCHEMA_VERSION) {
        return fail("The model's schema version is not the one this TFLite Micro reads");
    }
    tflite::MicroMutableOpResolver<TFLM_OP_COUNT> resolver;
#define ADD_OP(method)                                                                                           \
    if (resolver.method() != kTfLiteOk) {                                                                        \
        return fail("Cannot add op: " #method);                                                                  \
    }
    TFLM_MODEL_OPS(ADD_OP)
#undef ADD_OP
    tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, sizeof tensor_arena);
    if (interpreter.AllocateTensors() != kTfLiteOk) {
        return fail("AllocateTensors failed (arena too small?)");
    }
    platform_write("Arena used = ");
    print_uint(interpreter.arena_used_bytes());
    platform_write("\r\n");

    TfLiteTensor *input = interpreter.input(0);
    const TfLiteTensor *output = interpreter.output(0);
    if (input->bytes != sizeof test_input || output->dims->data[output->dims->size - 1] != NUM_CLASSES) {
        return fail("The model's input or output size differs from tflm_model.h's");
    }
    memcpy(input->data.raw, test_input, sizeof test_input);

    uint32_t image = 0;
    do {
        uint64_t start = platform_cycles();
        TfLiteStatus status = interpreter.Invoke();
        uint64_t cycles = platform_cycles() - start;
        if (status != kTfLiteOk) {
            return fail("Invoke failed");
        }
        float logits[NUM_CLASSES];
        float probabilities[NUM_CLASSES];
        output_logits(output, logits);
        softmax(logits, probabilities, NUM_CLASSES);
        print_image_result(image++, logits, probabilities, NUM_CLASSES, labels, cycles);
    } while (platform_next_image((uint8_t *)input->data.raw, (uint32_t)input->bytes));

    platform_write("Done\r\n");
    return 0;
}
