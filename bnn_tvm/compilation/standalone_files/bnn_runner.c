/*
 * bnn_runner: runs a standalone bnn_tvm library (compile --standalone) through its C API,
 * without Python or TVM. `run`/`verify` use it under qemu-user for ARM libraries on an x86
 * host; on a board it is the smallest test of a copied library.
 *
 * usage: bnn_runner LIB.so --info
 *          prints the API version, input shape, each output's shape and dtype, the metadata JSON
 *        bnn_runner LIB.so IN.bin OUT_PREFIX COUNT [THREADS]
 *          runs COUNT inputs (float32, C order, one after the other in IN.bin) and appends
 *          output i of every run to OUT_PREFIX<i>.bin
 * exit codes: 0 ok, 1 a run failed (bnn_model_last_error printed), 2 bad usage or files
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnn_model.h"

#define LOAD(name) name##_t name = (name##_t)dlsym(lib, #name)
typedef int (*bnn_model_run_all_t)(const float *, void *const *);
typedef int (*bnn_model_api_version_t)(void);
typedef int (*bnn_model_input_ndim_t)(void);
typedef const int64_t *(*bnn_model_input_shape_t)(void);
typedef int (*bnn_model_num_outputs_t)(void);
typedef int (*bnn_model_output_ndim_t)(int);
typedef const int64_t *(*bnn_model_output_shape_t)(int);
typedef const char *(*bnn_model_output_dtype_t)(int);
typedef const char *(*bnn_model_metadata_t)(void);
typedef const char *(*bnn_model_last_error_t)(void);
typedef int (*bnn_model_set_num_threads_t)(int);

static size_t dtype_bytes(const char *dtype)
{
    if (strcmp(dtype, "bool") == 0) return 1;
    const char *digits = dtype;
    while (*digits && (*digits < '0' || *digits > '9')) digits++;
    return (size_t)atoi(digits) / 8;
}

static void print_shape(const int64_t *shape, int ndim)
{
    printf("[");
    for (int d = 0; d < ndim; d++) printf("%s%lld", d ? ", " : "", (long long)shape[d]);
    printf("]");
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s LIB.so --info | LIB.so IN.bin OUT_PREFIX COUNT [THREADS]\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 2;
    }
    LOAD(bnn_model_run_all); LOAD(bnn_model_api_version); LOAD(bnn_model_input_ndim); LOAD(bnn_model_input_shape);
    LOAD(bnn_model_num_outputs); LOAD(bnn_model_output_ndim); LOAD(bnn_model_output_shape);
    LOAD(bnn_model_output_dtype); LOAD(bnn_model_metadata); LOAD(bnn_model_last_error); LOAD(bnn_model_set_num_threads);
    if (!bnn_model_run_all || !bnn_model_metadata || !bnn_model_output_dtype || !bnn_model_set_num_threads) {
        fprintf(stderr, "%s is not a standalone bnn_tvm library (no bnn_model_run_all)\n", argv[1]);
        return 2;
    }
    int outputs = bnn_model_num_outputs();
    if (argc == 3) {
        printf("{\"api_version\": %d, \"input_shape\": ", bnn_model_api_version());
        print_shape(bnn_model_input_shape(), bnn_model_input_ndim());
        printf(", \"outputs\": [");
        for (int i = 0; i < outputs; i++) {
            printf("%s{\"shape\": ", i ? ", " : "");
            print_shape(bnn_model_output_shape(i), bnn_model_output_ndim(i));
            printf(", \"dtype\": \"%s\"}", bnn_model_output_dtype(i));
        }
        printf("], \"metadata\": %s}\n", bnn_model_metadata());
        return 0;
    }
    if (argc == 6) bnn_model_set_num_threads(atoi(argv[5]));
    size_t in_count = 1;
    for (int d = 0; d < bnn_model_input_ndim(); d++) in_count *= (size_t)bnn_model_input_shape()[d];
    long runs = atol(argv[4]);
    FILE *in = fopen(argv[2], "rb");
    if (in == NULL) {
        perror(argv[2]);
        return 2;
    }
    float *x = malloc(in_count * sizeof(float));
    void **outs = calloc((size_t)outputs, sizeof(void *));
    size_t *sizes = calloc((size_t)outputs, sizeof(size_t));
    FILE **files = calloc((size_t)outputs, sizeof(FILE *));
    for (int i = 0; i < outputs; i++) {
        sizes[i] = dtype_bytes(bnn_model_output_dtype(i));
        for (int d = 0; d < bnn_model_output_ndim(i); d++) sizes[i] *= (size_t)bnn_model_output_shape(i)[d];
        outs[i] = malloc(sizes[i] ? sizes[i] : 1);
        char path[4096];
        snprintf(path, sizeof path, "%s%d.bin", argv[3], i);
        files[i] = fopen(path, "wb");
        if (files[i] == NULL) {
            perror(path);
            return 2;
        }
    }
    for (long r = 0; r < runs; r++) {
        if (fread(x, sizeof(float), in_count, in) != in_count) {
            fprintf(stderr, "%s: input %ld of %ld is cut short\n", argv[2], r + 1, runs);
            return 2;
        }
        if (bnn_model_run_all(x, outs) != 0) {
            fprintf(stderr, "run %ld failed: %s\n", r + 1, bnn_model_last_error());
            return 1;
        }
        for (int i = 0; i < outputs; i++) {
            if (fwrite(outs[i], 1, sizes[i], files[i]) != sizes[i]) {
                fprintf(stderr, "cannot write output %d\n", i);
                return 2;
            }
        }
    }
    for (int i = 0; i < outputs; i++) fclose(files[i]);
    fclose(in);
    return 0;
}
