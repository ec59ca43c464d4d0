/* ---- the C API (bnn_model.h); appended to the generated tables by bnn_tvm.compilation.standalone */

static pthread_mutex_t bnn_run_mu = PTHREAD_MUTEX_INITIALIZER;

__attribute__((constructor)) static void bnn_init(void)
{
    bnn_install_slots();
}

int bnn_model_api_version(void) { return BNN_MODEL_API_VERSION; }
int bnn_model_input_ndim(void) { return bnn_tensors[bnn_input_tensor].ndim; }
const int64_t *bnn_model_input_shape(void) { return bnn_tensors[bnn_input_tensor].shape; }
int bnn_model_num_outputs(void) { return BNN_NUM_OUTPUTS; }
const char *bnn_model_metadata(void) { return bnn_meta; }

int bnn_model_output_ndim(int index)
{
    return index >= 0 && index < BNN_NUM_OUTPUTS ? bnn_tensors[bnn_outputs[index]].ndim : -1;
}

const int64_t *bnn_model_output_shape(int index)
{
    return index >= 0 && index < BNN_NUM_OUTPUTS ? bnn_tensors[bnn_outputs[index]].shape : NULL;
}

const char *bnn_model_output_dtype(int index)
{
    return index >= 0 && index < BNN_NUM_OUTPUTS ? bnn_output_dtypes[index] : NULL;
}

const char *bnn_model_last_error(void)
{
    return bnn_error;
}

int bnn_model_set_num_threads(int n)
{
    pthread_mutex_lock(&bnn_run_mu);
    if (n > 0) bnn_num_threads = n > BNN_MAX_THREADS ? BNN_MAX_THREADS : n;
    int threads = bnn_threads();
    pthread_mutex_unlock(&bnn_run_mu);
    return threads;
}

int bnn_model_run_all(const float *in, void *const *outs)
{
    if (in == NULL || outs == NULL) {
        bnn_set_error("bnn_model_run: NULL %s", in == NULL ? "input" : "outputs");
        return BNN_ERROR_ARGUMENT;
    }
    for (int i = 0; i < BNN_NUM_OUTPUTS; i++) {
        if (outs[i] == NULL) {
            bnn_set_error("bnn_model_run: output %d is NULL", i);
            return BNN_ERROR_ARGUMENT;
        }
    }
    pthread_mutex_lock(&bnn_run_mu);
    bnn_set_error("%s", "");
    memcpy(bnn_input, in, bnn_input_bytes);
    int rc = BNN_OK;
    for (int s = 0; s < BNN_NUM_STEPS; s++) {
        TVMFFIAny result;
        memset(&result, 0, sizeof result);
        if (bnn_steps[s].fn(NULL, bnn_args + bnn_steps[s].first, bnn_steps[s].count, &result) != 0) {
            char message[sizeof bnn_error];
            pthread_mutex_lock(&bnn_error_mu);
            snprintf(message, sizeof message, "%s", bnn_error);
            pthread_mutex_unlock(&bnn_error_mu);
            bnn_set_error("kernel %s (step %d of %d) failed: %s", bnn_steps[s].name, s + 1, BNN_NUM_STEPS,
                          message[0] ? message : "no message");
            rc = strstr(message, "out of memory") ? BNN_ERROR_MEMORY : BNN_ERROR_KERNEL;
            break;
        }
    }
    if (rc == BNN_OK) {
        for (int i = 0; i < BNN_NUM_OUTPUTS; i++) memcpy(outs[i], bnn_tensors[bnn_outputs[i]].data, bnn_output_bytes[i]);
    }
    pthread_mutex_unlock(&bnn_run_mu);
    return rc;
}

int bnn_model_run(const float *in, float *out)
{
    if (out == NULL) {
        bnn_set_error("bnn_model_run: NULL output");
        return BNN_ERROR_ARGUMENT;
    }
    if (BNN_NUM_OUTPUTS == 1) {
        void *outs[1] = {out};
        return bnn_model_run_all(in, outs);
    }
    /* only the first output is wanted: the others land in scratch buffers */
    void *outs[BNN_NUM_OUTPUTS];
    outs[0] = out;
    int rc = BNN_OK;
    for (int i = 1; i < BNN_NUM_OUTPUTS; i++) {
        outs[i] = malloc(bnn_output_bytes[i] ? bnn_output_bytes[i] : 1);
        if (outs[i] == NULL) rc = BNN_ERROR_MEMORY;
    }
    if (rc == BNN_OK) rc = bnn_model_run_all(in, outs);
    else bnn_set_error("bnn_model_run: out of memory for the other outputs");
    for (int i = 1; i < BNN_NUM_OUTPUTS; i++) free(outs[i]);
    return rc;
}
