// CUDA kernels of the DEQ zoo's custom ops, compiled to PTX by deq-core's build script when
// the `cuda` feature is on (see crates/deq-core/build.rs) and loaded through candle's
// `CudaDevice::get_or_load_custom_func` under the module name "deq_kernels".
//
// Every kernel is deterministic (no atomics): each output element is written by one thread,
// which sums its terms in the order the CPU kernel does.

// Sparse-dense product out = M x for M in compressed rows (ptr: rows + 1 offsets, col/val:
// one entry per non-zero) and a dense, row-major x of shape (cols, m). One block per output
// row, its threads striding over the m features (coalesced reads of x's rows). Memory is
// O(rows + non-zeros) for M, never a (non-zeros, m) message tensor.
template <typename T>
__device__ void csr_spmm(const long long *ptr, const unsigned int *col, const T *val, const T *x, T *out,
                         unsigned int m) {
    const long long r = blockIdx.x;
    const long long begin = ptr[r], end = ptr[r + 1];
    for (unsigned int j = threadIdx.x; j < m; j += blockDim.x) {
        T acc = 0;
        for (long long k = begin; k < end; ++k) {
            acc += val[k] * x[(long long)col[k] * m + j];
        }
        out[r * m + j] = acc;
    }
}

extern "C" __global__ void deq_csr_spmm_f32(const long long *ptr, const unsigned int *col, const float *val,
                                            const float *x, float *out, unsigned int m) {
    csr_spmm<float>(ptr, col, val, x, out, m);
}

extern "C" __global__ void deq_csr_spmm_f64(const long long *ptr, const unsigned int *col, const double *val,
                                            const double *x, double *out, unsigned int m) {
    csr_spmm<double>(ptr, col, val, x, out, m);
}
