/*
 * bnn_runtime.c: the few TVM runtime services that compiled kernels call, in plain C.
 *
 * A kernel built by TVM's LLVM backend is a C-ABI function (__tvm_ffi_NAME, TVM FFI's "safe
 * call" convention) that reaches the runtime only through: the error setter
 * TVMFFIErrorSetRaisedFromCStrParts, and function-pointer slots the runtime fills when it loads
 * a module (__TVMBackendAllocWorkspace, __TVMBackendFreeWorkspace, __TVMBackendParallelLaunch).
 * This file implements them (malloc workspaces, a pthread pool), so that a standalone library
 * needs no libtvm. The generated driver includes it and fills the slots (bnn_install_slots).
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tvm/ffi/c_api.h>

#define BNN_ALIGNMENT 64 /* TVM's kernels assume 64-byte aligned buffers (NEON loads fault on less) */
#define BNN_MAX_THREADS 64

/* ---- errors: kept in a static string for bnn_model_last_error ---------------------------- */

static pthread_mutex_t bnn_error_mu = PTHREAD_MUTEX_INITIALIZER;
static char bnn_error[2048];

static void bnn_set_error(const char *format, ...)
{
    va_list args;
    pthread_mutex_lock(&bnn_error_mu);
    va_start(args, format);
    vsnprintf(bnn_error, sizeof bnn_error, format, args);
    va_end(args);
    pthread_mutex_unlock(&bnn_error_mu);
}

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts)
{
    char message[1536] = "";
    size_t used = 0;
    for (int32_t i = 0; i < num_parts && used + 1 < sizeof message; i++) {
        int wrote = snprintf(message + used, sizeof message - used, "%s", parts[i] ? parts[i] : "");
        if (wrote < 0) break;
        used += (size_t)wrote;
    }
    bnn_set_error("%s: %s", kind ? kind : "Error", message);
}

void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message)
{
    bnn_set_error("%s: %s", kind ? kind : "Error", message ? message : "");
}

/* ---- workspaces: what a kernel allocates beyond its stack ---------------------------------- */

static void *bnn_alloc_workspace(int device_type, int device_id, uint64_t size, int dtype_code, int dtype_bits)
{
    (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
    void *ptr = NULL;
    if (posix_memalign(&ptr, BNN_ALIGNMENT, size ? (size_t)size : 1) != 0) {
        bnn_set_error("out of memory: a kernel's workspace of %llu bytes", (unsigned long long)size);
        return NULL;
    }
    return ptr;
}

static int bnn_free_workspace(int device_type, int device_id, void *ptr)
{
    (void)device_type; (void)device_id;
    free(ptr);
    return 0;
}

/* ---- parallel loops: a persistent pthread pool ---------------------------------------------
 * TVM splits a parallel loop into penv->num_task chunks and calls the lambda once per task id.
 * Worker i runs task i (the caller runs task 0); the split is by output, so results do not
 * depend on the thread count. */

typedef struct {
    void *sync_handle;
    int32_t num_task;
} BnnParallelEnv;
typedef int (*BnnParallelLambda)(int task_id, BnnParallelEnv *penv, void *cdata);

static pthread_mutex_t bnn_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bnn_pool_start = PTHREAD_COND_INITIALIZER;
static pthread_cond_t bnn_pool_done = PTHREAD_COND_INITIALIZER;
static pthread_t bnn_pool_ids[BNN_MAX_THREADS];
static unsigned long bnn_pool_seen[BNN_MAX_THREADS];
static int bnn_pool_workers;   /* worker threads started (ids 1..bnn_pool_workers) */
static int bnn_num_threads;    /* 0: not decided yet */
static int bnn_pool_quit;
static unsigned long bnn_pool_generation;
static BnnParallelLambda bnn_pool_fn;
static void *bnn_pool_cdata;
static int bnn_pool_tasks, bnn_pool_pending, bnn_pool_failed;

static int bnn_default_threads(void)
{
    const char *names[] = {"BNN_NUM_THREADS", "TVM_NUM_THREADS"};
    for (int i = 0; i < 2; i++) {
        const char *value = getenv(names[i]);
        if (value && atoi(value) > 0) return atoi(value);
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus > 0 ? (int)cpus : 1;
}

static int bnn_threads(void)
{
    if (bnn_num_threads <= 0) bnn_num_threads = bnn_default_threads();
    if (bnn_num_threads > BNN_MAX_THREADS) bnn_num_threads = BNN_MAX_THREADS;
    return bnn_num_threads;
}

static void *bnn_pool_worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    pthread_mutex_lock(&bnn_pool_mu);
    for (;;) {
        while (bnn_pool_generation == bnn_pool_seen[id] && !bnn_pool_quit) pthread_cond_wait(&bnn_pool_start, &bnn_pool_mu);
        if (bnn_pool_quit) break;
        bnn_pool_seen[id] = bnn_pool_generation;
        BnnParallelLambda fn = bnn_pool_fn;
        void *cdata = bnn_pool_cdata;
        int tasks = bnn_pool_tasks;
        pthread_mutex_unlock(&bnn_pool_mu);
        int rc = 0;
        if (id < tasks) {
            BnnParallelEnv env = {NULL, tasks};
            rc = fn(id, &env, cdata);
        }
        pthread_mutex_lock(&bnn_pool_mu);
        if (rc != 0) bnn_pool_failed = 1;
        if (--bnn_pool_pending == 0) pthread_cond_signal(&bnn_pool_done);
    }
    pthread_mutex_unlock(&bnn_pool_mu);
    return NULL;
}

/* Starts workers up to `threads - 1`; returns how many run (fewer if pthread_create fails). */
static int bnn_pool_grow(int threads)
{
    pthread_mutex_lock(&bnn_pool_mu);
    while (bnn_pool_workers < threads - 1) {
        int id = bnn_pool_workers + 1;
        bnn_pool_seen[id] = bnn_pool_generation;
        if (pthread_create(&bnn_pool_ids[id], NULL, bnn_pool_worker, (void *)(intptr_t)id) != 0) break;
        bnn_pool_workers = id;
    }
    int workers = bnn_pool_workers;
    pthread_mutex_unlock(&bnn_pool_mu);
    return workers;
}

static int bnn_parallel_launch(BnnParallelLambda fn, void *cdata, int num_task)
{
    int threads = bnn_threads();
    int tasks = (num_task > 0 && num_task < threads) ? num_task : threads;
    if (tasks > 1) {
        int workers = bnn_pool_grow(threads);
        if (tasks - 1 > workers) tasks = workers + 1;
    }
    if (tasks <= 1) {
        BnnParallelEnv env = {NULL, 1};
        return fn(0, &env, cdata);
    }
    pthread_mutex_lock(&bnn_pool_mu);
    bnn_pool_fn = fn;
    bnn_pool_cdata = cdata;
    bnn_pool_tasks = tasks;
    bnn_pool_pending = bnn_pool_workers;
    bnn_pool_failed = 0;
    bnn_pool_generation++;
    pthread_cond_broadcast(&bnn_pool_start);
    pthread_mutex_unlock(&bnn_pool_mu);
    BnnParallelEnv env = {NULL, tasks};
    int rc = fn(0, &env, cdata);
    pthread_mutex_lock(&bnn_pool_mu);
    while (bnn_pool_pending > 0) pthread_cond_wait(&bnn_pool_done, &bnn_pool_mu);
    int failed = bnn_pool_failed;
    pthread_mutex_unlock(&bnn_pool_mu);
    return (rc != 0 || failed) ? -1 : 0;
}

/* Joins the workers when the library is unloaded (dlclose), so no thread runs unmapped code. */
__attribute__((destructor)) static void bnn_pool_stop(void)
{
    pthread_mutex_lock(&bnn_pool_mu);
    bnn_pool_quit = 1;
    int workers = bnn_pool_workers;
    pthread_cond_broadcast(&bnn_pool_start);
    pthread_mutex_unlock(&bnn_pool_mu);
    for (int id = 1; id <= workers; id++) pthread_join(bnn_pool_ids[id], NULL);
}
