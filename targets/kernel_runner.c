/*
 * Runs compiled TVM kernels of a bnn_tvm module under qemu-arm without a TVM runtime.
 *
 * PyPI has no armv7 TVM runtime, but a kernel in an exported module is a plain C-ABI symbol
 * (__tvm_ffi_<name>, TVM FFI "safe call" convention) whose only TVM dependency is the error
 * setter below.  This program dlopens the module, feeds a kernel the arguments recorded from
 * the x86 run of the same model, and writes every argument back after the call, so the caller
 * can compare outputs bit for bit.
 *
 * usage: kernel_runner MODULE.so CASE_DIR
 *   CASE_DIR/case.txt: first line "SYMBOL NARGS", then per argument
 *                      "DTYPE_CODE BITS NDIM DIM0 DIM1 ..."; data in argI.bin (raw, C order)
 *   writes CASE_DIR/argI.out for every argument.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tvm/ffi/c_api.h>

#define MAX_ARGS 16
#define MAX_DIMS 8
#define ALIGNMENT 64 /* NEON loads of TVM's vectorised code fault on less */

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts)
{
    fprintf(stderr, "kernel raised %s: ", kind);
    for (int32_t i = 0; i < num_parts; i++) {
        fputs(parts[i], stderr);
    }
    fputc('\n', stderr);
}

static void *alloc_workspace(int device_type, int device_id, uint64_t size, int dtype_code, int dtype_bits)
{
    (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
    void *ptr = NULL;
    return posix_memalign(&ptr, ALIGNMENT, size ? size : 1) == 0 ? ptr : NULL;
}

static int free_workspace(int device_type, int device_id, void *ptr)
{
    (void)device_type; (void)device_id;
    free(ptr);
    return 0;
}

/* Serial stand-in for the runtime's thread pool (parallel loops of the schedules call it
   through the __TVMBackendParallelLaunch slot): one task covers the whole range. */
typedef struct {
    void *sync_handle;
    int32_t num_task;
} ParallelGroupEnv;
typedef int (*ParallelLambda)(int task_id, ParallelGroupEnv *penv, void *cdata);

static int parallel_launch(ParallelLambda flambda, void *cdata, int num_task)
{
    ParallelGroupEnv env = {NULL, 1};
    (void)num_task;
    return flambda(0, &env, cdata);
}

static size_t read_file(const char *path, void *data, size_t size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    size_t got = fread(data, 1, size, f);
    fclose(f);
    return got;
}

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODULE.so CASE_DIR\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    /* The runtime fills these function pointers when it loads a module; so do we. */
    void **alloc_slot = dlsym(lib, "__TVMBackendAllocWorkspace");
    void **free_slot = dlsym(lib, "__TVMBackendFreeWorkspace");
    void **parallel_slot = dlsym(lib, "__TVMBackendParallelLaunch");
    if (alloc_slot) *alloc_slot = (void *)alloc_workspace;
    if (free_slot) *free_slot = (void *)free_workspace;
    if (parallel_slot) *parallel_slot = (void *)parallel_launch;

    char path[4096], symbol[256];
    int nargs;
    snprintf(path, sizeof path, "%s/case.txt", argv[2]);
    FILE *spec = fopen(path, "r");
    if (spec == NULL || fscanf(spec, "%255s %d", symbol, &nargs) != 2 || nargs > MAX_ARGS) {
        fprintf(stderr, "bad case file %s\n", path);
        return 2;
    }
    char full[300];
    snprintf(full, sizeof full, "__tvm_ffi_%s", symbol);
    TVMFFISafeCallType kernel = (TVMFFISafeCallType)dlsym(lib, full);
    if (kernel == NULL) {
        fprintf(stderr, "%s has no kernel %s\n", argv[1], full);
        return 2;
    }

    DLTensor tensors[MAX_ARGS];
    int64_t shapes[MAX_ARGS][MAX_DIMS];
    size_t sizes[MAX_ARGS];
    TVMFFIAny args[MAX_ARGS];
    for (int i = 0; i < nargs; i++) {
        int code, bits, ndim;
        if (fscanf(spec, "%d %d %d", &code, &bits, &ndim) != 3 || ndim > MAX_DIMS) {
            fprintf(stderr, "bad argument %d in %s\n", i, path);
            return 2;
        }
        size_t count = 1;
        for (int d = 0; d < ndim; d++) {
            long long dim;
            if (fscanf(spec, "%lld", &dim) != 1) return 2;
            shapes[i][d] = dim;
            count *= (size_t)dim;
        }
        sizes[i] = count * (size_t)(bits / 8);
        void *data = alloc_workspace(0, 0, sizes[i], code, bits);
        snprintf(path, sizeof path, "%s/arg%d.bin", argv[2], i);
        if (read_file(path, data, sizes[i]) != sizes[i]) {
            fprintf(stderr, "%s: short read\n", path);
            return 2;
        }
        memset(&tensors[i], 0, sizeof tensors[i]);
        tensors[i].data = data;
        tensors[i].device.device_type = kDLCPU;
        tensors[i].ndim = ndim;
        tensors[i].dtype.code = (uint8_t)code;
        tensors[i].dtype.bits = (uint8_t)bits;
        tensors[i].dtype.lanes = 1;
        tensors[i].shape = shapes[i];
        memset(&args[i], 0, sizeof args[i]);
        args[i].type_index = kTVMFFIDLTensorPtr;
        args[i].v_ptr = &tensors[i];
    }
    fclose(spec);

    TVMFFIAny result;
    memset(&result, 0, sizeof result);
    if (kernel(NULL, args, nargs, &result) != 0) {
        fprintf(stderr, "kernel %s failed\n", symbol);
        return 1;
    }
    for (int i = 0; i < nargs; i++) {
        snprintf(path, sizeof path, "%s/arg%d.out", argv[2], i);
        write_file(path, tensors[i].data, sizes[i]);
    }
    return 0;
}
