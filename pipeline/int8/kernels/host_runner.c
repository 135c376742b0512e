/* Host harness for a bundle: host_runner WEIGHTS.bin IMAGES.f32 COUNT OUTPUTS.f32
 * Runs the bundle entry point on COUNT float images (the input placeholder's layout) and writes the
 * output placeholder of each. bundle_api.h (generated beside it) maps the bundle's names to NET_*. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle_api.h"

static void *aligned_buffer(size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, NET_MEM_ALIGN, size ? size : NET_MEM_ALIGN) != 0) exit(3);
    memset(p, 0, size);
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s WEIGHTS.bin IMAGES.f32 COUNT OUTPUTS.f32\n", argv[0]);
        return 2;
    }
    uint8_t *constant = aligned_buffer(NET_CONSTANT_MEM_SIZE);
    uint8_t *mutable_ = aligned_buffer(NET_MUTABLE_MEM_SIZE);
    uint8_t *activations = aligned_buffer(NET_ACTIVATIONS_MEM_SIZE);
    FILE *weights = fopen(argv[1], "rb"), *images = fopen(argv[2], "rb"), *outputs = fopen(argv[4], "wb");
    if (!weights || !images || !outputs) {
        fprintf(stderr, "cannot open an input or output file\n");
        return 1;
    }
    if (fread(constant, 1, NET_CONSTANT_MEM_SIZE, weights) != NET_CONSTANT_MEM_SIZE) {
        fprintf(stderr, "%s: shorter than the constant memory size %d\n", argv[1], NET_CONSTANT_MEM_SIZE);
        return 1;
    }
    const long count = strtol(argv[3], NULL, 10);
    for (long i = 0; i < count; i++) {
        if (fread(mutable_ + NET_INPUT_OFFSET, 1, NET_INPUT_SIZE, images) != NET_INPUT_SIZE) {
            fprintf(stderr, "%s: image %ld missing\n", argv[2], i);
            return 1;
        }
        if (NET_ENTRY(constant, mutable_, activations) != 0) return 1;
        fwrite(mutable_ + NET_OUTPUT_OFFSET, 1, NET_OUTPUT_SIZE, outputs);
    }
    fclose(outputs);
    return 0;
}
