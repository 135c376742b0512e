/* Softmax on the float output (only as the model's last op); needs expf from libm. */
#include <math.h>

#include "nn_kernels.h"

void softmax_f32(const softmax_f32_params *p, const float *input, float *output)
{
    const int size = (int)p->size;
    float max = input[0], sum = 0.0f;
    for (int i = 1; i < size; i++)
        if (input[i] > max) max = input[i];
    for (int i = 0; i < size; i++) sum += output[i] = expf(input[i] - max);
    for (int i = 0; i < size; i++) output[i] /= sum;
}
