// The bptt engine's LSTM (plain, layer-normalised, with peepholes) and GRU (reset after, plain
// and layer-normalised; reset before, plain; the notes' minimal GRU) step loops, with each
// step's elementwise work fused into one pass.
//
// These compute what LSTMKernel / GRUAfterKernel .forward_step and .backward_step in
// rnnkit/engines/bptt.py compute, on the same buffers, leaving them as the Python loops leave
// them (tests/test_engines.py compares the two). A step is one product (small_mm below, or
// oneDNN's or ATen's GEMM past it) plus one loop over the batch rows here, instead of a dozen
// ATen calls, each of which costs a few microseconds of dispatch and setup; the float32
// activations are vectorised (sigmoid_row, tanh_row). The kernels choose where these loops
// run (Kernel.compiled_loops: FUSED_FORWARD_MAX, FUSED_MAX, FUSED_LN_MAX in
// engines/kernels/base.py, measured with benchmarks/bench_fused.py).
//
// Shapes: T steps, B batch rows, H hidden units, G = 4H; gate order i, f, g, o; every tensor
// contiguous. Layer norm (Ba et al. 2016) as rnnkit's LSTMCell: the recurrent term
// LN(W_hh h) * g_hh (no shift) and the cell LN(c) * g_c + b_c, biased variance.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using TensorList = std::vector<Tensor>;

namespace {

template <typename S>
inline S sigmoid(S x) {
  return S(1) / (S(1) + std::exp(-x));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RNNKIT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RNNKIT_CLONES
#endif

// -- the activations over whole rows ------------------------------------------------------------
// exp(x) in float32 without a libm call, so that a loop over a row vectorises (libm's expf is
// one scalar call a value: at a batch of 32 x 256 units the LSTM's 40,000 activations a step
// cost more than its product). Cephes's expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two
// parts), e^r by a degree-6 polynomial (relative error about 1e-7, one or two float32 ulps),
// 2^n by writing n into the exponent bits; x is clamped to [-87, 88], where 2^n stays a normal
// number (sigmoid(-100) is then 1.6e-38 instead of 3.7e-44: both nothing beside 1).
inline __attribute__((always_inline)) float exp_row_value(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln2) by adding and taking away 1.5 * 2^23 (floorf would not vectorise:
  // GCC keeps it a call under -ftrapping-math)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline __attribute__((always_inline)) float sigmoid_row_value(float x) {
  return 1.0f / (1.0f + exp_row_value(-x));
}

// y[j] = sigmoid(x[j] + add[j]) (add may be null); y may be x
RNNKIT_CLONES void sigmoid_row(float* y, const float* x, const float* add, int64_t n) {
  // y is x or apart from it, never a shifted overlap: no runtime alias check, which an
  // in-place call (y == x) would fail, leaving the scalar loop
  if (add == nullptr) {
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) y[j] = sigmoid_row_value(x[j]);
  } else {
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) y[j] = sigmoid_row_value(x[j] + add[j]);
  }
}

// tanh(x) as Cephes's tanhf: for |x| < 0.625 the odd polynomial x + x^3 P(x^2), else
// 1 - 2 / (e^{2|x|} + 1) with x's sign; both are computed and one is chosen, so that the loop
// vectorises. Relative error about 1e-7 everywhere (2 sigmoid(2x) - 1 alone loses the digits
// of small x: an absolute error of 1e-7 where tanh(x) is 1e-3).
inline __attribute__((always_inline)) float tanh_row_value(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big = 1.0f - 2.0f / (exp_row_value(2.0f * ax) + 1.0f);
  const float signed_big = x < 0.0f ? -big : big;
  return ax < 0.625f ? small : signed_big;
}

// y[j] = tanh(x[j] + add[j]) (add may be null); y may be x
RNNKIT_CLONES void tanh_row(float* y, const float* x, const float* add, int64_t n) {
  // y is x or apart from it, never a shifted overlap: no runtime alias check, which an
  // in-place call (y == x) would fail, leaving the scalar loop
  if (add == nullptr) {
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) y[j] = tanh_row_value(x[j]);
  } else {
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) y[j] = tanh_row_value(x[j] + add[j]);
  }
}

// float64 (the gradient checks): libm's, a value at a time
void sigmoid_row(double* y, const double* x, const double* add, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = sigmoid(add == nullptr ? x[j] : x[j] + add[j]);
}

void tanh_row(double* y, const double* x, const double* add, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = std::tanh(add == nullptr ? x[j] : x[j] + add[j]);
}

// Sums over a row in kLanes partial sums, so that the loop vectorises (one running sum is a
// chain of dependent adds the compiler may not reorder: at 32 rows of 768 the layer norms'
// sums were most of a GRU-LN step).
constexpr int kLanes = 16;

// sum over j < n of f(j)
template <typename S, typename F>
inline S lane_sum(int64_t n, const F& f) {
  S acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += f(j + l);
  S sum = 0;
  for (; j < n; ++j) sum += f(j);
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
}

// mean and 1 / sqrt(biased variance + eps) of x[0:n], two passes
template <typename S>
inline void moments(const S* x, int64_t n, double eps, S* mean, S* rstd) {
  const S m = lane_sum<S>(n, [x](int64_t j) { return x[j]; }) / S(n);
  const S var = lane_sum<S>(n, [x, m](int64_t j) { return (x[j] - m) * (x[j] - m); });
  *mean = m;
  *rstd = S(1) / std::sqrt(var / S(n) + S(eps));
}

template <typename S>
const S* ptr_or_null(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<S>() : nullptr;
}

// -- the per-step product at small batches ------------------------------------------------------
// y (m, n) += a (m, k) @ b (k, n), rows of y and a lda / ldy apart, b contiguous, for the few
// rows of one step: BLAS's call and blocking cost more than the product there (MKL's sgemm
// reaches 13-26 GFLOP/s at m = 1-4; benchmarks/RESULTS.md, "GEMM backends"). Four rows of b at
// a time go to every row of a, so b, which is what the product reads most, is read once per
// step from cache; the inner loop over n is what the compiler vectorises, and target_clones
// builds it for AVX-512, AVX2 + FMA and plain x86-64, chosen when the module loads by what the
// processor has.
template <typename S>
inline __attribute__((always_inline)) void small_mm_body(S* __restrict__ y, int64_t ldy,
                                                         const S* __restrict__ a, int64_t lda,
                                                         const S* __restrict__ b, int64_t m,
                                                         int64_t k, int64_t n) {
  int64_t kk = 0;
  for (; kk + 4 <= k; kk += 4) {
    const S* b0 = b + kk * n;
    const S* b1 = b0 + n;
    const S* b2 = b1 + n;
    const S* b3 = b2 + n;
    for (int64_t r = 0; r < m; ++r) {
      const S* ar = a + r * lda + kk;
      const S a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
      S* yr = y + r * ldy;
      for (int64_t j = 0; j < n; ++j) yr[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
    }
  }
  for (; kk < k; ++kk) {
    const S* b0 = b + kk * n;
    for (int64_t r = 0; r < m; ++r) {
      const S a0 = a[r * lda + kk];
      S* yr = y + r * ldy;
      for (int64_t j = 0; j < n; ++j) yr[j] += a0 * b0[j];
    }
  }
}

RNNKIT_CLONES void small_mm(float* y, int64_t ldy, const float* a, int64_t lda, const float* b,
                            int64_t m, int64_t k, int64_t n) {
  small_mm_body<float>(y, ldy, a, lda, b, m, k, n);
}

RNNKIT_CLONES void small_mm(double* y, int64_t ldy, const double* a, int64_t lda,
                            const double* b, int64_t m, int64_t k, int64_t n) {
  small_mm_body<double>(y, ldy, a, lda, b, m, k, n);
}

// At most this many rows, and this many multiply-adds, go through small_mm; more go to oneDNN
// or ATen (two threads). Measured (eleventh session, AMD EPYC, AVX-512, 2 threads):
// small_mm 2.6 against ATen's 5.0 us at 1 x 128 -> 512, 7.4 against 15.0 at 4 x 128 -> 512,
// 54 against 71 at 1 x 512 -> 2048 (1M multiply-adds), even at 8 x 256 -> 1024 (2M), 116
// against 89 at 16 x 256 -> 1024 (4M); in whole forward loops (benchmarks/bench_fused.py)
// 1.3-1.9x the Python loops' time at 4-16 x 512 -> 2048, whose 4 MiB weight one core reads
// from past its cache every step.
constexpr int64_t SMALL_MM_ROWS = 16;
constexpr int64_t SMALL_MM_WORK = int64_t(1) << 21;

bool uses_small_mm(int64_t m, int64_t k, int64_t n) {
  return m <= SMALL_MM_ROWS && m * k * n <= SMALL_MM_WORK;
}

// A loop's recurrent weight as its per-step products read it: b (k, n) contiguous, for
// small_mm and ATen, and, where the kernels chose oneDNN for this batch's products
// (rnnkit.gemm.StepWeight), packed: b^T in oneDNN's layout (mkldnn::_reorder_linear_weight).
// b may be absent when packed is given and small_mm does not take the product (the kernels then
// never make the contiguous b: rnnkit.gemm.StepWeight.b_for).
struct StepB {
  const OptTensor& b;
  const OptTensor& packed;

  int64_t n() const { return b.has_value() ? b->size(1) : packed->size(0); }

  // whether oneDNN makes an (m, k) product by this weight
  bool onednn(int64_t m, int64_t k) const {
    return packed.has_value() && (!b.has_value() || !uses_small_mm(m, k, n()));
  }
};

// oneDNN's product a @ w^T (+ bias (n), or + other (m, n) as a binary post-op), on a weight
// packed by mkldnn::_reorder_linear_weight: torch's own ops (the ones rnnkit.gemm calls from
// Python), through the dispatcher
Tensor onednn_mm(const Tensor& a, const Tensor& packed, const Tensor& bias, const Tensor& other) {
  static const auto plain =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view,
                        c10::List<c10::optional<c10::Scalar>>, c10::optional<c10::string_view>)>();
  static const auto binary =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                        c10::string_view)>();
  const Tensor ac = a.contiguous();
  if (other.defined()) return binary.call(ac, other.contiguous(), packed, c10::nullopt, "add");
  return plain.call(ac, packed, bias.defined() ? OptTensor(bias) : OptTensor(), "none",
                    c10::List<c10::optional<c10::Scalar>>(), c10::nullopt);
}

// out (m, n) = addend + a (m, k) @ b (k, n): addend is out itself (accumulate), one (n) row
// added to every row (a bias), an (m, n) tensor, or undefined (zero). small_mm where
// uses_small_mm, else oneDNN where the weight is packed for it, else ATen.
void step_mm(Tensor& out, const Tensor& addend, const Tensor& a, const StepB& w) {
  const int64_t m = a.size(0), k = a.size(1), n = w.n();
  if (w.onednn(m, k)) {
    const bool bias = addend.defined() && addend.dim() == 1;
    out.copy_(onednn_mm(a, *w.packed, bias ? addend : Tensor(),
                        bias || !addend.defined() ? Tensor() : addend));
    return;
  }
  TORCH_CHECK(w.b.has_value(), "step_mm: no dense weight for a product of ", m, " rows");
  const Tensor& b = *w.b;
  const bool small = uses_small_mm(m, k, n) && out.stride(1) == 1 && a.stride(1) == 1 &&
                     b.is_contiguous();
  if (!small) {
    if (!addend.defined()) {
      at::mm_out(out, a, b);
    } else {
      at::addmm_out(out, addend, a, b);
    }
    return;
  }
  if (!addend.defined()) {
    out.zero_();
  } else if (!addend.is_same(out)) {
    out.copy_(addend.dim() == 1 ? addend.unsqueeze(0).expand({m, n}) : addend);
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkit_step_mm", [&] {
    small_mm(out.data_ptr<scalar_t>(), out.stride(0), a.data_ptr<scalar_t>(), a.stride(0),
             b.data_ptr<scalar_t>(), m, k, n);
  });
}

// addend + a @ b as a new tensor (addend (m, n) or undefined)
Tensor step_mm(const Tensor& addend, const Tensor& a, const StepB& w) {
  Tensor out = at::empty({a.size(0), w.n()}, a.options());
  step_mm(out, addend.defined() ? addend.contiguous() : addend, a, w);
  return out;
}

// A step's product for a fused pass to read: where oneDNN makes it (as step_mm would), its
// output a @ b (+ addend when addend is a bias row), which the caller adds to an (m, n) addend
// itself (one pass over hot rows instead of oneDNN's binary post-op and a copy into out);
// else out = addend + a @ b is made here and the result is undefined.
Tensor step_product(Tensor& out, const Tensor& addend, const Tensor& a, const StepB& w) {
  if (w.onednn(a.size(0), a.size(1))) {
    const bool bias = addend.defined() && addend.dim() == 1;
    return onednn_mm(a, *w.packed, bias ? addend : Tensor(), Tensor());
  }
  step_mm(out, addend, a, w);
  return Tensor();
}

// A layer-normalised step's recurrent term a = h_{t-1} W_hh^T (B, G), into buf (the step's
// slice of a_hh): returns where a step function reads it (oneDNN's output, or buf itself)
// and sets keep to buf when the step function must copy it there.
template <typename S>
const S* ln_step_input(Tensor& buf, const Tensor& h_prev, const StepB& w, Tensor& y, S** keep) {
  y = step_product(buf, Tensor(), h_prev, w);
  *keep = y.defined() ? buf.data_ptr<S>() : nullptr;
  return y.defined() ? y.data_ptr<S>() : buf.data_ptr<S>();
}

// Layer norm's backward over one row of n values x with gain g (mean m, rstd r):
// dx = r (dy g - mean(dy g) - xhat mean(dy g xhat)), xhat = (x - m) r, written to dx, which may
// be x or dy itself; the gain's (and, given db, the shift's) gradients are added to dg (db).
template <typename S>
void layer_norm_backward_row(const S* dy, const S* x, S* dx, int64_t n, S m, S r, const S* g,
                             S* dg, S* db) {
  for (int64_t j = 0; j < n; ++j) dg[j] += dy[j] * ((x[j] - m) * r);
  if (db != nullptr) {
    for (int64_t j = 0; j < n; ++j) db[j] += dy[j];
  }
  const S s1 = lane_sum<S>(n, [dy, g](int64_t j) { return dy[j] * g[j]; }) / S(n);
  const S s2 = lane_sum<S>(n, [dy, g, x, m, r](int64_t j) {
                 return dy[j] * g[j] * ((x[j] - m) * r);
               }) / S(n);
  for (int64_t j = 0; j < n; ++j) {
    const S xhat = (x[j] - m) * r;
    dx[j] = r * (dy[j] * g[j] - s1 - xhat * s2);
  }
}

// -- a step's rows over the threads --------------------------------------------------------------
// A step's elementwise work runs over its batch rows [b0, b1) in at::parallel_for's threads
// once each thread's share holds at least kRowGrain gate values (rows are independent; at
// small batches it runs inline, on the calling thread). The GEMMs between the steps use both
// threads already; without this the other one waited through every step's elementwise pass.
// Sums over rows (the layer norms' gain and shift gradients) go to one partial row per thread
// (RowPartials), summed in thread order at the end: on one thread, the sums of a single loop.
constexpr int64_t kRowGrain = 8192;

int64_t row_grain(int64_t width) { return std::max<int64_t>(1, kRowGrain / width); }

template <typename F>
void over_rows(int64_t B, int64_t width, const F& f) {
  at::parallel_for(0, B, row_grain(width), f);
}

// n values per thread, zeroed: the calling thread's row by mine(), their sum by total().
struct RowPartials {
  Tensor rows;
  RowPartials(int64_t n, const at::TensorOptions& opts)
      : rows(at::zeros({at::get_num_threads(), n}, opts)) {}
  template <typename S>
  S* mine() const {
    return rows.data_ptr<S>() + at::get_thread_num() * rows.size(1);
  }
  Tensor total() const { return rows.sum(0); }
};

// One step's elementwise work, rows [b0, b1). gt holds x W_ih^T + b (+ W_hh h with no layer norm,
// or y = h_{t-1} W_hh^T is added first, given) and receives the gates; with layer norm,
// a = h_{t-1} W_hh^T is normalised and added first (and copied to a_keep, given).
// With peepholes (p: (3, H), the peephole LSTM's p_i, p_f, p_o; no layer norm):
// i, f = sigma(. + p_if c_{t-1}), o = sigma(. + p_o c_t), as PeepholeKernel.forward_step.
template <typename S>
void forward_step(S* gt, const S* y, const S* a, S* a_keep, const S* g_hh, const S* c_prev,
                  S* c, S* tc, S* h, const S* h_prev, const S* g_c, const S* b_c, S* mh, S* rh,
                  S* mc, S* rc, const S* p, const bool* mask, int64_t b0, int64_t b1,
                  int64_t H, double eps) {
  const int64_t G = 4 * H;
  for (int64_t b = b0; b < b1; ++b) {
    S* gr = gt + b * G;
    const S* cp = c_prev + b * H;
    if (y != nullptr) {
      const S* yr = y + b * G;
      for (int64_t j = 0; j < G; ++j) gr[j] += yr[j];
    }
    if (a != nullptr) {
      const S* ar = a + b * G;
      if (a_keep != nullptr) std::copy(ar, ar + G, a_keep + b * G);
      moments(ar, G, eps, mh + b, rh + b);
      const S m = mh[b], r = rh[b];
      for (int64_t j = 0; j < G; ++j) gr[j] += (ar[j] - m) * r * g_hh[j];
    }
    if (p != nullptr) {
      for (int64_t j = 0; j < H; ++j) {
        gr[j] += p[j] * cp[j];
        gr[H + j] += p[H + j] * cp[j];
      }
    }
    sigmoid_row(gr, gr, nullptr, 2 * H);
    tanh_row(gr + 2 * H, gr + 2 * H, nullptr, H);
    const S* i = gr;
    const S* f = gr + H;
    const S* g = gr + 2 * H;
    S* o = gr + 3 * H;
    S* cr = c + b * H;
    S* hr = h + b * H;
    for (int64_t j = 0; j < H; ++j) cr[j] = f[j] * cp[j] + i[j] * g[j];
    if (p != nullptr) {
      for (int64_t j = 0; j < H; ++j) o[j] += p[2 * H + j] * cr[j];
    }
    sigmoid_row(o, o, nullptr, H);
    if (g_c != nullptr) {
      moments(cr, H, eps, mc + b, rc + b);
      const S m = mc[b], r = rc[b];
      S* tr = tc + b * H;
      for (int64_t j = 0; j < H; ++j)
        tr[j] = (cr[j] - m) * r * g_c[j] + (b_c != nullptr ? b_c[j] : S(0));
      tanh_row(tr, tr, nullptr, H);
      for (int64_t j = 0; j < H; ++j) hr[j] = o[j] * tr[j];
    } else {
      tanh_row(hr, cr, nullptr, H);
      for (int64_t j = 0; j < H; ++j) hr[j] *= o[j];
    }
    if (mask != nullptr && !mask[b]) {  // outside its sequence the row keeps its state
      for (int64_t j = 0; j < H; ++j) {
        hr[j] = h_prev[b * H + j];
        cr[j] = cp[j];
      }
    }
  }
}

// One step's elementwise backward, rows [b0, b1), given dh, dc (the gradients of h_t, c_t that
// reach the gates: zero for rows outside their sequence). dg holds the step's gate factors
// and receives dL/d(gate pre-activation); with layer norm, a (the recurrent term's input)
// receives its gradient and the gain (and shift) gradients are added to dg_hh, dg_c, db_c.
// dc_prev receives dL/dc_{t-1} through this step; dct is scratch of H values.
template <typename S>
void backward_step(const S* dh, const S* dc, const S* k, const S* f, S* dg, const S* c, S* a,
                   const S* g_hh, const S* mh, const S* rh, const S* g_c, const S* mc,
                   const S* rc, S* dg_hh, S* dg_c, S* db_c, S* dc_prev, S* dct, int64_t b0,
                   int64_t b1, int64_t H) {
  const int64_t G = 4 * H;
  for (int64_t b = b0; b < b1; ++b) {
    const S* dhr = dh + b * H;
    const S* dcr = dc + b * H;
    const S* kr = k + b * H;
    if (g_c != nullptr) {  // c_t reaches h_t through tanh(LN(c_t) g_c + b_c)
      for (int64_t j = 0; j < H; ++j) dct[j] = dhr[j] * kr[j];
      layer_norm_backward_row<S>(dct, c + b * H, dct, H, mc[b], rc[b], g_c, dg_c, db_c);
      for (int64_t j = 0; j < H; ++j) dct[j] += dcr[j];
    } else {
      for (int64_t j = 0; j < H; ++j) dct[j] = dcr[j] + dhr[j] * kr[j];
    }
    S* dgr = dg + b * G;
    const S* fr = f + b * H;
    S* dcp = dc_prev + b * H;
    for (int64_t j = 0; j < H; ++j) {
      dgr[j] *= dct[j];
      dgr[H + j] *= dct[j];
      dgr[2 * H + j] *= dct[j];
      dgr[3 * H + j] *= dhr[j];
      dcp[j] = dct[j] * fr[j];
    }
    if (a != nullptr) {  // the recurrent term's layer norm, over all G gate inputs
      S* ar = a + b * G;
      layer_norm_backward_row<S>(dgr, ar, ar, G, mh[b], rh[b], g_hh, dg_hh, nullptr);
    }
  }
}

// GRU (reset after the product, torch.nn.GRU's), one step's elementwise work, rows [b0, b1).
// gt (B, 3H) holds x W_ih^T + b_ih and receives r, z, n; gh (row stride 4H) holds the
// recurrent projection h_{t-1} W_hh^T + b_hh (or receives it from y (B, 3H), given), or with
// layer norm receives LN(a) g_hh + b_hh of a = h_{t-1} W_hh^T (a copied to a_keep, given).
template <typename S>
void gru_forward_step(S* gt, S* gh, const S* y, const S* a, S* a_keep, const S* g_hh,
                      const S* b_hh, const S* h_prev, S* h, S* mh, S* rh, const bool* mask,
                      int64_t b0, int64_t b1, int64_t H, double eps) {
  const int64_t G = 3 * H;
  for (int64_t b = b0; b < b1; ++b) {
    S* gr = gt + b * G;
    S* ghr = gh + b * 4 * H;
    if (y != nullptr) std::copy(y + b * G, y + (b + 1) * G, ghr);
    if (a != nullptr) {
      const S* ar = a + b * G;
      if (a_keep != nullptr) std::copy(ar, ar + G, a_keep + b * G);
      moments(ar, G, eps, mh + b, rh + b);
      const S m = mh[b], r = rh[b];
      for (int64_t j = 0; j < G; ++j)
        ghr[j] = (ar[j] - m) * r * g_hh[j] + (b_hh != nullptr ? b_hh[j] : S(0));
    }
    sigmoid_row(gr, gr, ghr, 2 * H);
    const S* hp = h_prev + b * H;
    S* hr = h + b * H;
    S* n = gr + 2 * H;
    for (int64_t j = 0; j < H; ++j) n[j] += gr[j] * ghr[2 * H + j];
    tanh_row(n, n, nullptr, H);
    for (int64_t j = 0; j < H; ++j) hr[j] = n[j] + gr[H + j] * (hp[j] - n[j]);
    if (mask != nullptr && !mask[b]) {
      for (int64_t j = 0; j < H; ++j) hr[j] = hp[j];
    }
  }
}

// GRU backward, one step, rows [b0, b1): d4 (row stride 4H) holds the step's four factors
// (GRUAfterKernel.start_backward) and receives them times dh: d loss / d gh and, last, d loss
// / d n's pre-activation; direct receives dh z (+ base). With layer norm, a (the recurrent
// term's input) receives its gradient and the gain gradient is added to dg_hh.
template <typename S>
void gru_backward_step(const S* dh, S* d4, const S* gates, const S* base, S* direct, S* a,
                       const S* g_hh, const S* mh, const S* rh, S* dg_hh, int64_t b0,
                       int64_t b1, int64_t H) {
  const int64_t G = 3 * H;
  for (int64_t b = b0; b < b1; ++b) {
    const S* dhr = dh + b * H;
    S* dr = d4 + b * 4 * H;
    const S* z = gates + b * G + H;
    S* dir = direct + b * H;
    for (int64_t j = 0; j < H; ++j) {
      dr[j] *= dhr[j];
      dr[H + j] *= dhr[j];
      dr[2 * H + j] *= dhr[j];
      dr[3 * H + j] *= dhr[j];
      dir[j] = dhr[j] * z[j] + (base != nullptr ? base[b * H + j] : S(0));
    }
    if (a != nullptr) {
      S* ar = a + b * G;
      layer_norm_backward_row<S>(dr, ar, ar, G, mh[b], rh[b], g_hh, dg_hh, nullptr);
    }
  }
}

// The part of a state's gradient that reaches the step before t without passing the step's
// weights: for rows outside their sequence at step t (mask), all of g, which is then zeroed
// for them (nothing of it reaches the step's gates); plus the outputs' gradient of that state
// at t - 1 (after). Undefined when there is neither.
Tensor pass_through(Tensor& g, const OptTensor& mask, const OptTensor& after, int64_t t) {
  Tensor base;
  if (mask.has_value()) {
    const Tensor m = mask->select(0, t);
    base = at::where(m, 0.0, g);
    g = at::where(m, g, 0.0);
  }
  if (t > 0 && after.has_value()) {
    const Tensor a = after->select(0, t - 1);
    base = base.defined() ? base + a : a;
  }
  return base;
}

// A one-state backward step's start: pass_through's part of dh (made contiguous, or
// undefined), with dh made contiguous for the step's loops.
Tensor step_start(Tensor& dh, const OptTensor& mask, const OptTensor& after, int64_t t) {
  Tensor base = pass_through(dh, mask, after, t);
  dh = dh.contiguous();
  return base.defined() ? base.contiguous() : base;
}

}  // namespace

// Forward over all steps.
//   gates (T, B, G): the input projection; step t's gates (after their nonlinearities) are
//     written over gates[t].
//   h, c (T + 1, B, H): index 0 holds the initial state; step t writes index t + 1.
//   wt (H, G): the transposed recurrent weight.
//   mask (T, B, 1) bool or none: outside its sequence a row keeps its state.
//   With layer norm (a_hh given): a_hh (T, B, G) receives h_t W_hh^T, tc (T, B, H)
//   tanh(LN(c_t) g_c + b_c); g_hh (G), g_c (H), b_c (H) or none.
//   peephole (3, H) contiguous or none: the peephole LSTM's weights (forward_step).
// Returns the per-step means and rstds (T, B, 1) of the two layer norms (none without).
TensorList lstm_forward(Tensor gates, Tensor h, Tensor c, OptTensor wt, Tensor tc, OptTensor mask,
                        OptTensor a_hh, OptTensor g_hh, OptTensor g_c, OptTensor b_c,
                        double eps, OptTensor peephole, OptTensor packed) {
  const int64_t T = gates.size(0), B = gates.size(1), H = c.size(2);
  const StepB fw{wt, packed};
  const bool ln = a_hh.has_value();
  auto opts = gates.options();
  TensorList stats;
  if (ln) {
    for (int i = 0; i < 4; ++i) stats.push_back(at::empty({T, B, 1}, opts));
  }
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_lstm_forward", [&] {
    using S = scalar_t;
    const bool* m = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
    S* hp = h.data_ptr<S>();
    S* cp = c.data_ptr<S>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor gt = gates.select(0, t);
      const S* a = nullptr;
      S* a_keep = nullptr;
      Tensor y;
      if (ln) {
        Tensor at_ = a_hh->select(0, t);
        a = ln_step_input<S>(at_, h.select(0, t), fw, y, &a_keep);
      } else {
        y = step_product(gt, gt, h.select(0, t), fw);
      }
      const int64_t s = t * B;
      S* gp = gt.data_ptr<S>();
      const S* yp = y.defined() && !ln ? y.data_ptr<S>() : nullptr;
      over_rows(B, 4 * H, [&](int64_t b0, int64_t b1) {
        forward_step<S>(gp, yp, a, a_keep, ptr_or_null<S>(g_hh), cp + s * H, cp + (s + B) * H,
                        ln ? tc.data_ptr<S>() + s * H : nullptr, hp + (s + B) * H, hp + s * H,
                        ptr_or_null<S>(g_c), ptr_or_null<S>(b_c),
                        ln ? stats[0].data_ptr<S>() + s : nullptr,
                        ln ? stats[1].data_ptr<S>() + s : nullptr,
                        ln ? stats[2].data_ptr<S>() + s : nullptr,
                        ln ? stats[3].data_ptr<S>() + s : nullptr, ptr_or_null<S>(peephole),
                        m == nullptr ? nullptr : m + s, b0, b1, H, eps);
      });
    }
  });
  return stats;
}

// Backward over all steps, from the last states' gradients dh, dc.
//   dgates (T, B, G): the per-step factors of LSTMKernel.start_backward; receives
//     dL/d(gate pre-activation) (with layer norm, of the normalised recurrent term).
//   k, f (T, B, H): o (1 - tc^2) and the forget gates. w (G, H): the recurrent weight.
//   after, after_c (T, B, H) or none: dL/dh_t, dL/dc_t from the outputs. mask (T, B, 1) bool
//   or none.
//   With layer norm: c (T + 1, B, H) the cells, a_hh (T, B, G) the recurrent term's inputs
//   (overwritten with their gradients), the gains and shift, stats as lstm_forward returns.
// Returns dh_0, dc_0 and, with layer norm, the gradients of g_hh, g_c and b_c (if given).
TensorList lstm_backward(Tensor dgates, Tensor k, Tensor f, OptTensor w, Tensor dh, Tensor dc,
                         OptTensor after, OptTensor after_c, OptTensor mask, Tensor c,
                         OptTensor a_hh,
                         OptTensor g_hh, OptTensor g_c, OptTensor b_c, TensorList stats,
                         OptTensor packed) {
  const int64_t T = dgates.size(0), B = dgates.size(1), H = k.size(2);
  const StepB bw{w, packed};
  const bool ln = a_hh.has_value();
  const auto opts = dgates.options();
  // the gains' and shift's gradients, a partial row per thread; dct, scratch per thread
  const RowPartials dg_hh(ln ? 4 * H : 0, opts), dg_c(ln ? H : 0, opts),
      db_c(ln && b_c.has_value() ? H : 0, opts), dct(H, opts);
  AT_DISPATCH_FLOATING_TYPES(dgates.scalar_type(), "rnnkit_lstm_backward", [&] {
    using S = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor base = pass_through(dh, mask, after, t);  // added to dL/dh_{t-1}
      const Tensor base_c = pass_through(dc, mask, after_c, t);  // added to dL/dc_{t-1}
      dh = dh.contiguous();
      dc = dc.contiguous();
      Tensor dg = dgates.select(0, t);
      Tensor dc_prev = at::empty_like(dc);
      const int64_t s = t * B;
      over_rows(B, 4 * H, [&](int64_t b0, int64_t b1) {
        backward_step<S>(
            dh.data_ptr<S>(), dc.data_ptr<S>(), k.data_ptr<S>() + s * H,
            f.data_ptr<S>() + s * H, dg.data_ptr<S>(),
            ln ? c.data_ptr<S>() + (s + B) * H : nullptr,
            ln ? a_hh->data_ptr<S>() + s * 4 * H : nullptr, ptr_or_null<S>(g_hh),
            ln ? stats[0].data_ptr<S>() + s : nullptr,
            ln ? stats[1].data_ptr<S>() + s : nullptr, ptr_or_null<S>(g_c),
            ln ? stats[2].data_ptr<S>() + s : nullptr,
            ln ? stats[3].data_ptr<S>() + s : nullptr, ln ? dg_hh.mine<S>() : nullptr,
            ln ? dg_c.mine<S>() : nullptr, db_c.rows.size(1) ? db_c.mine<S>() : nullptr,
            dc_prev.data_ptr<S>(), dct.mine<S>(), b0, b1, H);
      });
      const Tensor dpre = ln ? a_hh->select(0, t) : dg;
      dh = step_mm(base, dpre, bw);
      dc = base_c.defined() ? dc_prev + base_c : dc_prev;
    }
  });
  TensorList out = {dh, dc};
  if (ln) {
    out.push_back(dg_hh.total());
    out.push_back(dg_c.total());
    if (b_c.has_value()) out.push_back(db_c.total());
  }
  return out;
}

// GRU (reset after) forward over all steps.
//   gates (T, B, 3H): the input projection (with b_ih), receives r, z, n.
//   h (T + 1, B, H): index 0 holds the initial state. gh4 (T, B, 4H): the first 3H of each
//   step receive the recurrent term (the last H are the backward pass's).
//   wt (H, 3H); b_hh (3H) or none; mask as lstm_forward.
//   With layer norm (a_hh (T, B, 3H) given): a_hh receives h_t W_hh^T, normalised with gain
//   g_hh and shift b_hh. Returns the layer norm's per-step means and rstds (T, B, 1).
TensorList gru_forward(Tensor gates, Tensor h, Tensor gh4, OptTensor wt, OptTensor b_hh,
                       OptTensor mask, OptTensor a_hh, OptTensor g_hh, double eps,
                       OptTensor packed) {
  const int64_t T = gates.size(0), B = gates.size(1), H = h.size(2);
  const StepB fw{wt, packed};
  const bool ln = a_hh.has_value();
  TensorList stats;
  if (ln) {
    for (int i = 0; i < 2; ++i) stats.push_back(at::empty({T, B, 1}, gates.options()));
  }
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_forward", [&] {
    using S = scalar_t;
    const bool* m = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
    S* hp = h.data_ptr<S>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor gh = gh4.select(0, t).narrow(-1, 0, 3 * H);
      const S* a = nullptr;
      S* a_keep = nullptr;
      Tensor y;
      if (ln) {
        Tensor at_ = a_hh->select(0, t);
        a = ln_step_input<S>(at_, h.select(0, t), fw, y, &a_keep);
      } else {
        y = step_product(gh, b_hh.has_value() ? *b_hh : Tensor(), h.select(0, t), fw);
      }
      const int64_t s = t * B;
      S* gp = gates.select(0, t).data_ptr<S>();
      const S* yp = y.defined() && !ln ? y.data_ptr<S>() : nullptr;
      over_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
        gru_forward_step<S>(gp, gh.data_ptr<S>(), yp, a, a_keep, ptr_or_null<S>(g_hh),
                            ptr_or_null<S>(b_hh), hp + s * H, hp + (s + B) * H,
                            ln ? stats[0].data_ptr<S>() + s : nullptr,
                            ln ? stats[1].data_ptr<S>() + s : nullptr,
                            m == nullptr ? nullptr : m + s, b0, b1, H, eps);
      });
    }
  });
  return stats;
}

// GRU (reset after) backward over all steps, from the last state's gradient dh.
//   gh4 (T, B, 4H): GRUAfterKernel.start_backward's factors, multiplied by each step's dh.
//   gates (T, B, 3H): r, z, n. w (3H, H). after, mask as lstm_backward.
//   With layer norm: a_hh (T, B, 3H) (overwritten with its gradient), g_hh, stats as
//   gru_forward returns. Returns dh_0 and, with layer norm, the gain's gradient.
TensorList gru_backward(Tensor gh4, Tensor gates, OptTensor w, Tensor dh, OptTensor after,
                        OptTensor mask, OptTensor a_hh, OptTensor g_hh, TensorList stats,
                        OptTensor packed) {
  const int64_t T = gates.size(0), B = gates.size(1), H = dh.size(1);
  const StepB bw{w, packed};
  const bool ln = a_hh.has_value();
  const RowPartials dg_hh(ln ? 3 * H : 0, gates.options());  // a partial row per thread
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_backward", [&] {
    using S = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor base = step_start(dh, mask, after, t);  // added to dL/dh_{t-1}
      Tensor direct = at::empty_like(dh);
      const int64_t s = t * B;
      over_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
        gru_backward_step<S>(dh.data_ptr<S>(), gh4.data_ptr<S>() + s * 4 * H,
                             gates.data_ptr<S>() + s * 3 * H,
                             base.defined() ? base.data_ptr<S>() : nullptr,
                             direct.data_ptr<S>(),
                             ln ? a_hh->data_ptr<S>() + s * 3 * H : nullptr,
                             ptr_or_null<S>(g_hh), ln ? stats[0].data_ptr<S>() + s : nullptr,
                             ln ? stats[1].data_ptr<S>() + s : nullptr,
                             ln ? dg_hh.mine<S>() : nullptr, b0, b1, H);
      });
      const Tensor dpre = ln ? a_hh->select(0, t) : gh4.select(0, t).narrow(-1, 0, 3 * H);
      dh = step_mm(direct, dpre, bw);
    }
  });
  TensorList out = {dh};
  if (ln) out.push_back(dg_hh.total());
  return out;
}

// GRU (reset before the product, the original), forward over all steps, no layer norm:
//   gates (T, B, 3H): the input projection (every bias), receives r, z, n.
//   h (T + 1, B, H): index 0 holds the initial state. rh (T, B, 2H): the first H of each step
//   receive r * h_{t-1} (the last H are the backward pass's). wt_rz (H, 2H), wt_n (H, H): the
//   transposed recurrent weights. mask as lstm_forward. As GRUBeforeKernel.forward_step:
//   r, z = sigma(xp_rz + h_{t-1} W_rz^T), n = tanh(xp_n + (r h_{t-1}) W_n^T),
//   h_t = n + z (h_{t-1} - n).
void gru_before_forward(Tensor gates, Tensor h, Tensor rh, OptTensor wt_rz, OptTensor wt_n,
                        OptTensor mask, OptTensor packed_rz, OptTensor packed_n) {
  const int64_t T = gates.size(0), B = gates.size(1), H = h.size(2);
  const StepB fw_rz{wt_rz, packed_rz}, fw_n{wt_n, packed_n};
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_before_forward", [&] {
    using S = scalar_t;
    const bool* m = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      Tensor gt = gates.select(0, t);
      Tensor rz = gt.narrow(-1, 0, 2 * H);
      Tensor ht = h.select(0, t);
      const Tensor y = step_product(rz, rz, ht, fw_rz);  // oneDNN's, added here
      const S* yp = y.defined() ? y.data_ptr<S>() : nullptr;
      S* g = gt.data_ptr<S>();
      const S* hp = ht.data_ptr<S>();
      S* rhp = rh.select(0, t).data_ptr<S>();
      over_rows(B, 2 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          S* gr = g + b * 3 * H;
          sigmoid_row(gr, gr, yp == nullptr ? nullptr : yp + b * 2 * H, 2 * H);
          for (int64_t j = 0; j < H; ++j) rhp[b * 2 * H + j] = gr[j] * hp[b * H + j];
        }
      });
      Tensor n = gt.narrow(-1, 2 * H, H);
      const Tensor yn = step_product(n, n, rh.select(0, t).narrow(-1, 0, H), fw_n);
      const S* ynp = yn.defined() ? yn.data_ptr<S>() : nullptr;
      S* hn = h.select(0, t + 1).data_ptr<S>();
      over_rows(B, H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          S* gr = g + b * 3 * H;
          const S* z = gr + H;
          S* nr = gr + 2 * H;
          const S* hr = hp + b * H;
          S* out = hn + b * H;
          const bool inside = m == nullptr || m[t * B + b];
          tanh_row(nr, nr, ynp == nullptr ? nullptr : ynp + b * H, H);
          for (int64_t j = 0; j < H; ++j)
            out[j] = inside ? nr[j] + z[j] * (hr[j] - nr[j]) : hr[j];
        }
      });
    }
  });
}

// GRU (reset before), backward over all steps from the last state's gradient dh, no layer
// norm. gates (T, B, 3H): r, z and, in n's slot, (1 - z)(1 - n^2); rh (T, B, 2H): r(1 - r)
// h_{t-1} and z(1 - z)(h_{t-1} - n) (GRUBeforeKernel.start_backward). Each step turns n's slot
// into dL/dn_pre and rh into dL/d[r, z]_pre, as GRUBeforeKernel.backward_step. w_rz (2H, H),
// w_n (H, H): the recurrent weights. after, mask as lstm_backward. Returns dh_0.
TensorList gru_before_backward(Tensor gates, Tensor rh, OptTensor w_rz, OptTensor w_n, Tensor dh,
                               OptTensor after, OptTensor mask, OptTensor packed_rz,
                               OptTensor packed_n) {
  const int64_t T = gates.size(0), B = gates.size(1), H = dh.size(1);
  const StepB bw_rz{w_rz, packed_rz}, bw_n{w_n, packed_n};
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_before_backward", [&] {
    using S = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor base = step_start(dh, mask, after, t);  // added to dL/dh_{t-1}
      Tensor gt = gates.select(0, t);
      Tensor rt = rh.select(0, t);
      S* g = gt.data_ptr<S>();
      S* f = rt.data_ptr<S>();
      const S* d = dh.data_ptr<S>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < H; ++j) {
          g[b * 3 * H + 2 * H + j] *= d[b * H + j];
          f[b * 2 * H + H + j] *= d[b * H + j];
        }
      }
      Tensor drh = at::empty({B, H}, dh.options());
      step_mm(drh, Tensor(), gt.narrow(-1, 2 * H, H), bw_n);
      Tensor direct = at::empty({B, H}, dh.options());
      const S* dr = drh.data_ptr<S>();
      S* di = direct.data_ptr<S>();
      const S* bp = base.defined() ? base.data_ptr<S>() : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        const S* r = g + b * 3 * H;
        const S* z = r + H;
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j;
          f[b * 2 * H + j] *= dr[k];
          di[k] = d[k] * z[j] + (bp != nullptr ? bp[k] : S(0)) + dr[k] * r[j];
        }
      }
      step_mm(direct, direct, rt, bw_rz);
      dh = direct;
    }
  });
  return {dh};
}

// The notes' minimal GRU, forward over all steps: gates (T, B, 2H) the input projection (every
// bias), receives u, n; h (T + 1, B, H); wt (H, 2H); mask as lstm_forward. As
// MinimalGRUKernel.forward_step: u, n = sigma, tanh of (xp_t + h_{t-1} W_hh^T),
// h_t = h_{t-1} + u (n - h_{t-1}).
void minimal_gru_forward(Tensor gates, Tensor h, OptTensor wt, OptTensor mask, OptTensor packed) {
  const int64_t T = gates.size(0), B = gates.size(1), H = h.size(2);
  const StepB fw{wt, packed};
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_minimal_gru_forward", [&] {
    using S = scalar_t;
    const bool* m = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      Tensor gt = gates.select(0, t);
      Tensor ht = h.select(0, t);
      const Tensor y = step_product(gt, gt, ht, fw);  // oneDNN's, added here
      const S* yp = y.defined() ? y.data_ptr<S>() : nullptr;
      S* g = gt.data_ptr<S>();
      const S* hp = ht.data_ptr<S>();
      S* hn = h.select(0, t + 1).data_ptr<S>();
      over_rows(B, 2 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          S* u = g + b * 2 * H;
          S* n = u + H;
          const S* hr = hp + b * H;
          S* out = hn + b * H;
          const bool inside = m == nullptr || m[t * B + b];
          sigmoid_row(u, u, yp == nullptr ? nullptr : yp + b * 2 * H, H);
          tanh_row(n, n, yp == nullptr ? nullptr : yp + b * 2 * H + H, H);
          for (int64_t j = 0; j < H; ++j)
            out[j] = inside ? hr[j] + u[j] * (n[j] - hr[j]) : hr[j];
        }
      });
    }
  });
}

// The minimal GRU, backward over all steps from the last state's gradient dh: gates (T, B, 2H)
// hold MinimalGRUKernel.start_backward's factors u(1 - u)(n - h_{t-1}) and u(1 - n^2), which
// each step multiplies by dL/dh_t (making dL/dgates); u (T, B, H) the update gates; w (2H, H).
// after, mask as lstm_backward. Returns dh_0.
TensorList minimal_gru_backward(Tensor gates, Tensor u, OptTensor w, Tensor dh, OptTensor after,
                                OptTensor mask, OptTensor packed) {
  const int64_t T = gates.size(0), B = gates.size(1), H = dh.size(1);
  const StepB bw{w, packed};
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_minimal_gru_backward", [&] {
    using S = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor base = step_start(dh, mask, after, t);  // added to dL/dh_{t-1}
      Tensor gt = gates.select(0, t);
      S* g = gt.data_ptr<S>();
      const S* ur = u.select(0, t).data_ptr<S>();
      const S* d = dh.data_ptr<S>();
      const S* bp = base.defined() ? base.data_ptr<S>() : nullptr;
      Tensor direct = at::empty({B, H}, dh.options());
      S* di = direct.data_ptr<S>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j;
          g[b * 2 * H + j] *= d[k];
          g[b * 2 * H + H + j] *= d[k];
          di[k] = d[k] - d[k] * ur[k] + (bp != nullptr ? bp[k] : S(0));
        }
      }
      step_mm(direct, direct, gt, bw);
      dh = direct;
    }
  });
  return {dh};
}

// The scan engine's gated linear recurrences (rnnkit/engines/scan.py, GatedScan): the scan
// cells' coefficients and the recurrence c_t = a_t * c_{t-1} + b_t in one pass forward, and
// its gradient (g_t = dL/dc_t + a_{t+1} * g_{t+1}) with the gates' in one pass backward, over
// the B x H independent columns: each thread takes a block of columns through all T steps.
// The gates arrive as pre-activations P (one GEMM's output) and are activated where they are
// used (scan_sigmoid / scan_tanh, vectorised in float32), forward and again backward: nothing of the
// size of P is written but the gradient (an activated copy of P cost a fresh 50 MB mapping a
// call at (256, 32, 512, 512)). What they compute is what rnnkit/cells/scan.py's coefficients
// and carried compute (tests/test_scan.py compares them):
//   kind 0, minGRU  (s, v): a = 1 - s,        b = s * v~
//   kind 1, minLSTM (f, i, v): a = f / (f + i), b = i / (f + i) * v~
//   kind 2, QRNN    (s, f, o): a = f,          b = (1 - f) * z,   h = o * c
// where for the QRNN z = tanh(p_z), f = sigmoid(p_f), o = sigmoid(p_o).
// v~ = v, or with `positive` Feng et al.'s g(v) = v + 1/2 (v >= 0), sigmoid(v) (v < 0).
// Steps t >= lengths[b] are padding: a = 1, b = 0 (c carried) and h carried.
namespace {

// The activations (in float32 the vectorised ones), Feng et al.'s g and its slope, `Positive`
// a template argument; both branches of g are computed, so that a loop over a row vectorises
inline __attribute__((always_inline)) float scan_sigmoid(float v) {
  return sigmoid_row_value(v);
}
inline double scan_sigmoid(double v) { return sigmoid(v); }
inline __attribute__((always_inline)) float scan_tanh(float v) { return tanh_row_value(v); }
inline double scan_tanh(double v) { return std::tanh(v); }

template <typename S, bool Positive>
inline __attribute__((always_inline)) S cand_value(S v) {
  if (!Positive) return v;
  const S s = scan_sigmoid(v);
  return v >= S(0) ? v + S(0.5) : s;
}

template <typename S, bool Positive>
inline __attribute__((always_inline)) S cand_slope(S v) {
  if (!Positive) return S(1);
  const S s = scan_sigmoid(v);
  return v >= S(0) ? S(1) : s * (S(1) - s);
}

// calls f(b, j0, j1) for the row pieces of columns [lo, hi) of B rows of H
template <typename F>
inline void for_rows(int64_t lo, int64_t hi, int64_t H, const F& f) {
  while (lo < hi) {
    const int64_t b = lo / H, j0 = lo % H, j1 = std::min(H, j0 + (hi - lo));
    f(b, j0, j1);
    lo += j1 - j0;
  }
}

// One row piece [j0, j1) of a step, forward: c_t (and h_t for the QRNN) from c_{t-1} and the
// gates' pre-activations p of that row. Each pointer is the start of its own row (restrict:
// nothing overlaps), so that the loops vectorise; the float32 versions are compiled for each
// x86-64 level (RNNKIT_CLONES), `positive` is a template argument (no branch inside a loop).
template <typename S, int Kind, bool Positive>
inline __attribute__((always_inline)) void forward_piece(
    const S* __restrict__ p, const S* __restrict__ prev, S* __restrict__ ct,
    S* __restrict__ ht, int64_t H, int64_t j0, int64_t j1) {
  if (Kind == 0) {
    for (int64_t j = j0; j < j1; ++j) {
      const S s = scan_sigmoid(p[j]);
      ct[j] = (S(1) - s) * prev[j] + s * cand_value<S, Positive>(p[H + j]);
    }
  } else if (Kind == 1) {
    for (int64_t j = j0; j < j1; ++j) {
      const S f = scan_sigmoid(p[j]), i = scan_sigmoid(p[H + j]), r = S(1) / (f + i);
      ct[j] = f * r * prev[j] + i * r * cand_value<S, Positive>(p[2 * H + j]);
    }
  } else {
    for (int64_t j = j0; j < j1; ++j) {
      const S f = scan_sigmoid(p[H + j]);
      const S cj = f * prev[j] + (S(1) - f) * scan_tanh(p[j]);
      ct[j] = cj;
      ht[j] = scan_sigmoid(p[2 * H + j]) * cj;
    }
  }
}

// The same piece backward: the gates' gradients d from g_t = dc_t + gc (gc: the gradient
// carried from step t + 1, updated in place to what step t - 1 receives), and for the QRNN
// the carried dL/dh hc (zeroed: h_{t-1} reaches h_t through c only).
template <typename S, int Kind, bool Positive>
inline __attribute__((always_inline)) void backward_piece(
    const S* __restrict__ p, const S* __restrict__ prev, const S* __restrict__ ct,
    const S* __restrict__ dc, const S* __restrict__ dh, S* __restrict__ d, S* __restrict__ gc,
    S* __restrict__ hc, int64_t H, int64_t j0, int64_t j1) {
  if (Kind == 0) {
    for (int64_t j = j0; j < j1; ++j) {
      const S s = scan_sigmoid(p[j]), v = p[H + j], gt = dc[j] + gc[j];
      d[j] = gt * (cand_value<S, Positive>(v) - prev[j]) * s * (S(1) - s);
      d[H + j] = gt * s * cand_slope<S, Positive>(v);
      gc[j] = (S(1) - s) * gt;
    }
  } else if (Kind == 1) {
    for (int64_t j = j0; j < j1; ++j) {
      const S f = scan_sigmoid(p[j]), i = scan_sigmoid(p[H + j]), v = p[2 * H + j];
      const S r = S(1) / (f + i);
      const S gt = dc[j] + gc[j];
      const S da = gt * prev[j], dr = gt * cand_value<S, Positive>(v);
      d[j] = (da - dr) * i * r * r * f * (S(1) - f);
      d[H + j] = (dr - da) * f * r * r * i * (S(1) - i);
      d[2 * H + j] = gt * i * r * cand_slope<S, Positive>(v);
      gc[j] = f * r * gt;
    }
  } else {
    for (int64_t j = j0; j < j1; ++j) {
      const S z = scan_tanh(p[j]), f = scan_sigmoid(p[H + j]);
      const S o = scan_sigmoid(p[2 * H + j]);
      const S dht = dh[j] + hc[j];
      const S gt = dc[j] + gc[j] + dht * o;
      d[j] = gt * (S(1) - f) * (S(1) - z * z);
      d[H + j] = gt * (prev[j] - z) * f * (S(1) - f);
      d[2 * H + j] = dht * ct[j] * o * (S(1) - o);
      gc[j] = f * gt;
      hc[j] = S(0);
    }
  }
}

// kind and positive to the template arguments of the pieces
template <typename S>
inline __attribute__((always_inline)) void forward_piece_of(
    int kind, bool positive, const S* p, const S* prev, S* ct, S* ht, int64_t H, int64_t j0,
    int64_t j1) {
  if (kind == 0) {
    positive ? forward_piece<S, 0, true>(p, prev, ct, ht, H, j0, j1)
             : forward_piece<S, 0, false>(p, prev, ct, ht, H, j0, j1);
  } else if (kind == 1) {
    positive ? forward_piece<S, 1, true>(p, prev, ct, ht, H, j0, j1)
             : forward_piece<S, 1, false>(p, prev, ct, ht, H, j0, j1);
  } else {
    forward_piece<S, 2, false>(p, prev, ct, ht, H, j0, j1);
  }
}

template <typename S>
inline __attribute__((always_inline)) void backward_piece_of(
    int kind, bool positive, const S* p, const S* prev, const S* ct, const S* dc, const S* dh,
    S* d, S* gc, S* hc, int64_t H, int64_t j0, int64_t j1) {
  if (kind == 0) {
    positive ? backward_piece<S, 0, true>(p, prev, ct, dc, dh, d, gc, hc, H, j0, j1)
             : backward_piece<S, 0, false>(p, prev, ct, dc, dh, d, gc, hc, H, j0, j1);
  } else if (kind == 1) {
    positive ? backward_piece<S, 1, true>(p, prev, ct, dc, dh, d, gc, hc, H, j0, j1)
             : backward_piece<S, 1, false>(p, prev, ct, dc, dh, d, gc, hc, H, j0, j1);
  } else {
    backward_piece<S, 2, false>(p, prev, ct, dc, dh, d, gc, hc, H, j0, j1);
  }
}

RNNKIT_CLONES void scan_forward_piece(int kind, bool positive, const float* p,
                                      const float* prev, float* ct, float* ht, int64_t H,
                                      int64_t j0, int64_t j1) {
  forward_piece_of<float>(kind, positive, p, prev, ct, ht, H, j0, j1);
}

void scan_forward_piece(int kind, bool positive, const double* p, const double* prev,
                        double* ct, double* ht, int64_t H, int64_t j0, int64_t j1) {
  forward_piece_of<double>(kind, positive, p, prev, ct, ht, H, j0, j1);
}

RNNKIT_CLONES void scan_backward_piece(int kind, bool positive, const float* p,
                                       const float* prev, const float* ct, const float* dc,
                                       const float* dh, float* d, float* gc, float* hc,
                                       int64_t H, int64_t j0, int64_t j1) {
  backward_piece_of<float>(kind, positive, p, prev, ct, dc, dh, d, gc, hc, H, j0, j1);
}

void scan_backward_piece(int kind, bool positive, const double* p, const double* prev,
                         const double* ct, const double* dc, const double* dh, double* d,
                         double* gc, double* hc, int64_t H, int64_t j0, int64_t j1) {
  backward_piece_of<double>(kind, positive, p, prev, ct, dc, dh, d, gc, hc, H, j0, j1);
}

// P (T, B, G) the gates' pre-activations
template <typename S>
void gated_forward_cols(int kind, const S* P, const S* c0, const S* h0, const int64_t* len,
                        bool positive, S* c, S* h, int64_t T, int64_t B, int64_t H,
                        int64_t lo, int64_t hi) {
  const int64_t N = B * H, G = (kind == 0 ? 2 : 3) * H;
  for (int64_t t = 0; t < T; ++t) {
    for_rows(lo, hi, H, [&](int64_t b, int64_t j0, int64_t j1) {
      const S* prev = (t ? c + (t - 1) * N : c0) + b * H;
      S* ct = c + t * N + b * H;
      S* ht = h != nullptr ? h + t * N + b * H : nullptr;
      if (len != nullptr && t >= len[b]) {  // padding: carried
        for (int64_t j = j0; j < j1; ++j) ct[j] = prev[j];
        if (h != nullptr) {
          const S* hp = (t ? h + (t - 1) * N : h0) + b * H;
          for (int64_t j = j0; j < j1; ++j) ht[j] = hp[j];
        }
        return;
      }
      scan_forward_piece(kind, positive, P + (t * B + b) * G, prev, ct, ht, H, j0, j1);
    });
  }
}

// dc, dh: the gradients reaching the c and h sequences (dh only for the QRNN); dA: the
// gradients of the gates' pre-activations P (T, B, G); carry (B, H): dL/dc_0 on return, and
// hcarry dL/dh_0 (QRNN).
template <typename S>
void gated_backward_cols(int kind, const S* P, const S* c, const S* c0, const int64_t* len,
                         bool positive, const S* dc, const S* dh, S* dA, S* carry, S* hcarry,
                         int64_t T, int64_t B, int64_t H, int64_t lo, int64_t hi) {
  const int64_t N = B * H, G = (kind == 0 ? 2 : 3) * H;
  for_rows(lo, hi, H, [&](int64_t b, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) carry[b * H + j] = S(0);
    if (hcarry != nullptr)
      for (int64_t j = j0; j < j1; ++j) hcarry[b * H + j] = S(0);
  });
  for (int64_t t = T - 1; t >= 0; --t) {
    for_rows(lo, hi, H, [&](int64_t b, int64_t j0, int64_t j1) {
      const int64_t row = t * N + b * H;
      S* gc = carry + b * H;
      S* hc = hcarry != nullptr ? hcarry + b * H : nullptr;
      S* d = dA + (t * B + b) * G;
      if (len != nullptr && t >= len[b]) {  // padding: a = 1, b = 0; h carried
        for (int64_t j = j0; j < j1; ++j) gc[j] += dc[row + j];
        if (hc != nullptr)
          for (int64_t j = j0; j < j1; ++j) hc[j] += dh[row + j];
        for (int64_t k = 0; k < G; k += H)
          for (int64_t j = j0; j < j1; ++j) d[k + j] = S(0);
        return;
      }
      const S* prev = (t ? c + (t - 1) * N : c0) + b * H;
      scan_backward_piece(kind, positive, P + (t * B + b) * G, prev, c + row, dc + row,
                          dh != nullptr ? dh + row : nullptr, d, gc, hc, H, j0, j1);
    });
  }
}

constexpr int64_t kScanGrain = 2048;

}  // namespace

// P (T, B, G) the gates' pre-activations, c0 (B, H), h0 (B, H) for the QRNN (else
// undefined), lengths (B,) int64 or undefined: {c} or, for the QRNN, {c, h}, (T, B, H) each.
TensorList gated_scan_forward(int64_t kind, const Tensor& P, const Tensor& c0, const Tensor& h0,
                              const Tensor& lengths, bool positive) {
  TORCH_CHECK(P.is_contiguous() && c0.is_contiguous(), "gated_scan_forward: contiguous tensors");
  const int64_t T = P.size(0), B = P.size(1), H = c0.size(-1);
  TORCH_CHECK(P.size(2) == (kind == 0 ? 2 : 3) * H, "gated_scan_forward: P of ", P.size(2),
              " columns for a hidden size of ", H);
  const bool qrnn = kind == 2;
  auto c = at::empty({T, B, H}, P.options());
  Tensor h = qrnn ? at::empty({T, B, H}, P.options()) : Tensor();
  const Tensor h0c = qrnn ? h0.contiguous() : Tensor();
  const Tensor lens = lengths.defined() ? lengths.to(at::kLong).contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "gated_scan_forward", [&] {
    const scalar_t* pP = P.data_ptr<scalar_t>();
    const scalar_t* p0 = c0.data_ptr<scalar_t>();
    const scalar_t* ph0 = qrnn ? h0c.data_ptr<scalar_t>() : nullptr;
    const int64_t* pl = lens.defined() ? lens.data_ptr<int64_t>() : nullptr;
    scalar_t* pc = c.data_ptr<scalar_t>();
    scalar_t* ph = qrnn ? h.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B * H, kScanGrain, [&](int64_t lo, int64_t hi) {
      gated_forward_cols<scalar_t>(int(kind), pP, p0, ph0, pl, positive, pc, ph, T, B, H, lo,
                                   hi);
    });
  });
  TensorList out = {c};
  if (qrnn) out.push_back(h);
  return out;
}

// The gradients: {dA (T, B, G) of the gates' pre-activations P, dL/dc0 (B, H)} and for the
// QRNN dL/dh0 (B, H); dc, dh (T, B, H) the gradients reaching c and h (dh: QRNN only).
TensorList gated_scan_backward(int64_t kind, const Tensor& P, const Tensor& c, const Tensor& c0,
                               const Tensor& lengths, bool positive, const Tensor& dc,
                               const Tensor& dh) {
  TORCH_CHECK(P.is_contiguous() && c.is_contiguous() && c0.is_contiguous(),
              "gated_scan_backward: contiguous tensors");
  const int64_t T = P.size(0), B = P.size(1), H = c0.size(-1);
  const bool qrnn = kind == 2;
  const Tensor dcc = dc.contiguous(), dhc = qrnn ? dh.contiguous() : Tensor();
  const Tensor lens = lengths.defined() ? lengths.to(at::kLong).contiguous() : Tensor();
  auto dA = at::empty_like(P);
  auto carry = at::empty_like(c0);
  Tensor hcarry = qrnn ? at::empty_like(c0) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "gated_scan_backward", [&] {
    const int64_t* pl = lens.defined() ? lens.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, B * H, kScanGrain, [&](int64_t lo, int64_t hi) {
      gated_backward_cols<scalar_t>(
          int(kind), P.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(),
          pl, positive, dcc.data_ptr<scalar_t>(), qrnn ? dhc.data_ptr<scalar_t>() : nullptr,
          dA.data_ptr<scalar_t>(), carry.data_ptr<scalar_t>(),
          qrnn ? hcarry.data_ptr<scalar_t>() : nullptr, T, B, H, lo, hi);
    });
  });
  TensorList out = {dA, carry};
  if (qrnn) out.push_back(hcarry);
  return out;
}

// step_mm for Python: out = addend + a @ b as the loops here make each step's product
// (StepNorms recomputes the forward's products with it, bit for bit)
void step_mm_py(Tensor out, OptTensor addend, Tensor a, OptTensor b, OptTensor packed) {
  step_mm(out, addend.has_value() ? *addend : Tensor(), a, StepB{b, packed});
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step_mm", &step_mm_py, "one step's product as the loops make it");
  m.def("row_grain", &row_grain,
        "the fewest batch rows of a width a thread's share of a step's elementwise work holds");
  m.def("uses_small_mm", &uses_small_mm,
        "whether the loops make an (m, k) x (k, n) step product themselves");
  m.def("gated_scan_forward", &gated_scan_forward,
        "scan engine: the scan cells' gates and c_t = a_t * c_{t-1} + b_t in one pass");
  m.def("gated_scan_backward", &gated_scan_backward,
        "scan engine: the gradient of gated_scan_forward in one pass");
  m.def("gru_forward", &gru_forward, "bptt GRU (reset after) forward loop");
  m.def("gru_before_forward", &gru_before_forward, "bptt GRU (reset before) forward loop");
  m.def("gru_before_backward", &gru_before_backward, "bptt GRU (reset before) backward loop");
  m.def("minimal_gru_forward", &minimal_gru_forward, "bptt minimal GRU forward loop");
  m.def("minimal_gru_backward", &minimal_gru_backward, "bptt minimal GRU backward loop");
  m.def("gru_backward", &gru_backward, "bptt GRU (reset after) backward loop");
  m.def("lstm_forward", &lstm_forward, "bptt LSTM forward loop");
  m.def("lstm_backward", &lstm_backward, "bptt LSTM backward loop");
}
