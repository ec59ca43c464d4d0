/*
 * bnn_model.h: the C API of a model compiled by `python -m bnn_tvm compile --standalone`.
 *
 * The library holds the model's kernels, its constants and a driver that calls the kernels in
 * order on preallocated buffers; it needs no TVM runtime (only libc, libm and libpthread).
 * Functions returning int return 0 on success and a negative code on failure, with a message
 * in bnn_model_last_error(). Runs are serialised by a mutex: one run at a time per process.
 */
#ifndef BNN_MODEL_H_
#define BNN_MODEL_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BNN_MODEL_API_VERSION 1

enum {
    BNN_OK = 0,
    BNN_ERROR_ARGUMENT = -1, /* a NULL pointer or an index out of range */
    BNN_ERROR_KERNEL = -2,   /* a kernel reported an error (message in bnn_model_last_error) */
    BNN_ERROR_MEMORY = -3    /* a kernel's workspace or a thread could not be allocated */
};

/* Runs the model: `in` holds the input (float32, C order, bnn_model_input_shape), `out`
   receives the first output (bnn_model_output_shape(0), dtype bnn_model_output_dtype(0)). */
int bnn_model_run(const float *in, float *out);
/* Every output: outs[i] receives output i (bnn_model_num_outputs() pointers). */
int bnn_model_run_all(const float *in, void *const *outs);

int bnn_model_api_version(void);
/* Shapes: number of dimensions, and a pointer to them (static storage, never freed). */
int bnn_model_input_ndim(void);
const int64_t *bnn_model_input_shape(void);
int bnn_model_num_outputs(void);
int bnn_model_output_ndim(int index);                /* -1 for an index out of range */
const int64_t *bnn_model_output_shape(int index);    /* NULL for an index out of range */
const char *bnn_model_output_dtype(int index);       /* "float32", ...; NULL out of range */
/* JSON: model file, target, input name and shape, output names, fused layers. */
const char *bnn_model_metadata(void);
/* The message of the last failed call ("" if none). */
const char *bnn_model_last_error(void);
/* Threads for parallel loops (default: $BNN_NUM_THREADS, else the online CPUs); returns the
   number in use. n <= 0 leaves it unchanged. */
int bnn_model_set_num_threads(int n);

#ifdef __cplusplus
}
#endif
#endif /* BNN_MODEL_H_ */
