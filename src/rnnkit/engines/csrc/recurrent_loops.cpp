// The bptt engine's LSTM and GRU (reset after) step loops, plain and layer-normalised, with
// each step's elementwise work fused into one pass.
//
// These compute what LSTMKernel / GRUAfterKernel .forward_step and .backward_step in
// rnnkit/engines/bptt.py compute, on the same buffers, leaving them as the Python loops leave
// them (tests/test_engines.py compares the two). A step is one GEMM (ATen) plus one loop over
// the batch rows here, instead of a dozen ATen calls: at small batches each of those costs a
// few microseconds of dispatch and setup for a few hundred numbers of arithmetic. The
// transcendental functions here are scalar, so at large batches the vectorised ATen calls of
// the Python loops are faster; bptt.py chooses (Kernel._loops).
//
// Shapes: T steps, B batch rows, H hidden units, G = 4H; gate order i, f, g, o; every tensor
// contiguous. Layer norm (Ba et al. 2016) as rnnkit's LSTMCell: the recurrent term
// LN(W_hh h) * g_hh (no shift) and the cell LN(c) * g_c + b_c, biased variance.
#include <torch/extension.h>

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

// mean and 1 / sqrt(biased variance + eps) of x[0:n], two passes
template <typename S>
inline void moments(const S* x, int64_t n, double eps, S* mean, S* rstd) {
  S sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += x[j];
  const S m = sum / S(n);
  S var = 0;
  for (int64_t j = 0; j < n; ++j) var += (x[j] - m) * (x[j] - m);
  *mean = m;
  *rstd = S(1) / std::sqrt(var / S(n) + S(eps));
}

template <typename S>
const S* ptr_or_null(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<S>() : nullptr;
}

// Layer norm's backward over one row of n values x with gain g (mean m, rstd r):
// dx = r (dy g - mean(dy g) - xhat mean(dy g xhat)), xhat = (x - m) r, written to dx, which may
// be x or dy itself; the gain's (and, given db, the shift's) gradients are added to dg (db).
template <typename S>
void layer_norm_backward_row(const S* dy, const S* x, S* dx, int64_t n, S m, S r, const S* g,
                             S* dg, S* db) {
  S s1 = 0, s2 = 0;
  for (int64_t j = 0; j < n; ++j) {
    const S xhat = (x[j] - m) * r;
    const S dyw = dy[j] * g[j];
    s1 += dyw;
    s2 += dyw * xhat;
    dg[j] += dy[j] * xhat;
    if (db != nullptr) db[j] += dy[j];
  }
  s1 /= S(n);
  s2 /= S(n);
  for (int64_t j = 0; j < n; ++j) {
    const S xhat = (x[j] - m) * r;
    dx[j] = r * (dy[j] * g[j] - s1 - xhat * s2);
  }
}

// One step's elementwise work, all rows. gt holds x W_ih^T + b (+ W_hh h with no layer norm)
// and receives the gates; with layer norm, a = h_{t-1} W_hh^T is normalised and added first.
template <typename S>
void forward_step(S* gt, const S* a, const S* g_hh, const S* c_prev, S* c, S* tc, S* h,
                  const S* h_prev, const S* g_c, const S* b_c, S* mh, S* rh, S* mc, S* rc,
                  const bool* mask, int64_t B, int64_t H, double eps) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < B; ++b) {
    S* gr = gt + b * G;
    if (a != nullptr) {
      const S* ar = a + b * G;
      moments(ar, G, eps, mh + b, rh + b);
      const S m = mh[b], r = rh[b];
      for (int64_t j = 0; j < G; ++j) gr[j] += (ar[j] - m) * r * g_hh[j];
    }
    for (int64_t j = 0; j < 2 * H; ++j) gr[j] = sigmoid(gr[j]);
    for (int64_t j = 2 * H; j < 3 * H; ++j) gr[j] = std::tanh(gr[j]);
    for (int64_t j = 3 * H; j < G; ++j) gr[j] = sigmoid(gr[j]);
    const S* i = gr;
    const S* f = gr + H;
    const S* g = gr + 2 * H;
    const S* o = gr + 3 * H;
    S* cr = c + b * H;
    S* hr = h + b * H;
    const S* cp = c_prev + b * H;
    for (int64_t j = 0; j < H; ++j) cr[j] = f[j] * cp[j] + i[j] * g[j];
    if (g_c != nullptr) {
      moments(cr, H, eps, mc + b, rc + b);
      const S m = mc[b], r = rc[b];
      S* tr = tc + b * H;
      for (int64_t j = 0; j < H; ++j) {
        const S y = (cr[j] - m) * r * g_c[j] + (b_c != nullptr ? b_c[j] : S(0));
        tr[j] = std::tanh(y);
        hr[j] = o[j] * tr[j];
      }
    } else {
      for (int64_t j = 0; j < H; ++j) hr[j] = o[j] * std::tanh(cr[j]);
    }
    if (mask != nullptr && !mask[b]) {  // outside its sequence the row keeps its state
      for (int64_t j = 0; j < H; ++j) {
        hr[j] = h_prev[b * H + j];
        cr[j] = cp[j];
      }
    }
  }
}

// One step's elementwise backward, all rows, given dh, dc (the gradients of h_t, c_t that
// reach the gates: zero for rows outside their sequence). dg holds the step's gate factors
// and receives dL/d(gate pre-activation); with layer norm, a (the recurrent term's input)
// receives its gradient and the gain (and shift) gradients are added to dg_hh, dg_c, db_c.
// dc_prev receives dL/dc_{t-1} through this step.
template <typename S>
void backward_step(const S* dh, const S* dc, const S* k, const S* f, S* dg, const S* c, S* a,
                   const S* g_hh, const S* mh, const S* rh, const S* g_c, const S* mc,
                   const S* rc, S* dg_hh, S* dg_c, S* db_c, S* dc_prev, S* dct, int64_t B,
                   int64_t H) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < B; ++b) {
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

// GRU (reset after the product, torch.nn.GRU's), one step's elementwise work, all rows.
// gt (B, 3H) holds x W_ih^T + b_ih and receives r, z, n; gh (row stride 4H) holds the
// recurrent projection h_{t-1} W_hh^T + b_hh, or with layer norm receives
// LN(a) g_hh + b_hh of a = h_{t-1} W_hh^T.
template <typename S>
void gru_forward_step(S* gt, S* gh, const S* a, const S* g_hh, const S* b_hh, const S* h_prev,
                      S* h, S* mh, S* rh, const bool* mask, int64_t B, int64_t H, double eps) {
  const int64_t G = 3 * H;
  for (int64_t b = 0; b < B; ++b) {
    S* gr = gt + b * G;
    S* ghr = gh + b * 4 * H;
    if (a != nullptr) {
      const S* ar = a + b * G;
      moments(ar, G, eps, mh + b, rh + b);
      const S m = mh[b], r = rh[b];
      for (int64_t j = 0; j < G; ++j)
        ghr[j] = (ar[j] - m) * r * g_hh[j] + (b_hh != nullptr ? b_hh[j] : S(0));
    }
    for (int64_t j = 0; j < 2 * H; ++j) gr[j] = sigmoid(gr[j] + ghr[j]);
    const S* hp = h_prev + b * H;
    S* hr = h + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const S n = std::tanh(gr[2 * H + j] + gr[j] * ghr[2 * H + j]);
      gr[2 * H + j] = n;
      hr[j] = n + gr[H + j] * (hp[j] - n);
    }
    if (mask != nullptr && !mask[b]) {
      for (int64_t j = 0; j < H; ++j) hr[j] = hp[j];
    }
  }
}

// GRU backward, one step, all rows: d4 (row stride 4H) holds the step's four factors
// (GRUAfterKernel.start_backward) and receives them times dh: d loss / d gh and, last, d loss
// / d n's pre-activation; direct receives dh z (+ base). With layer norm, a (the recurrent
// term's input) receives its gradient and the gain gradient is added to dg_hh.
template <typename S>
void gru_backward_step(const S* dh, S* d4, const S* gates, const S* base, S* direct, S* a,
                       const S* g_hh, const S* mh, const S* rh, S* dg_hh, int64_t B,
                       int64_t H) {
  const int64_t G = 3 * H;
  for (int64_t b = 0; b < B; ++b) {
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

}  // namespace

// Forward over all steps.
//   gates (T, B, G): the input projection; step t's gates (after their nonlinearities) are
//     written over gates[t].
//   h, c (T + 1, B, H): index 0 holds the initial state; step t writes index t + 1.
//   wt (H, G): the transposed recurrent weight.
//   mask (T, B, 1) bool or none: outside its sequence a row keeps its state.
//   With layer norm (a_hh given): a_hh (T, B, G) receives h_t W_hh^T, tc (T, B, H)
//   tanh(LN(c_t) g_c + b_c); g_hh (G), g_c (H), b_c (H) or none.
// Returns the per-step means and rstds (T, B, 1) of the two layer norms (none without).
TensorList lstm_forward(Tensor gates, Tensor h, Tensor c, Tensor wt, Tensor tc, OptTensor mask,
                        OptTensor a_hh, OptTensor g_hh, OptTensor g_c, OptTensor b_c,
                        double eps) {
  const int64_t T = gates.size(0), B = gates.size(1), H = c.size(2);
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
      S* a = nullptr;
      if (ln) {
        Tensor at_ = a_hh->select(0, t);
        at::mm_out(at_, h.select(0, t), wt);
        a = at_.data_ptr<S>();
      } else {
        at::addmm_out(gt, gt, h.select(0, t), wt);
      }
      const int64_t s = t * B;
      forward_step<S>(gt.data_ptr<S>(), a, ptr_or_null<S>(g_hh), cp + s * H, cp + (s + B) * H,
                      ln ? tc.data_ptr<S>() + s * H : nullptr, hp + (s + B) * H, hp + s * H,
                      ptr_or_null<S>(g_c), ptr_or_null<S>(b_c),
                      ln ? stats[0].data_ptr<S>() + s : nullptr,
                      ln ? stats[1].data_ptr<S>() + s : nullptr,
                      ln ? stats[2].data_ptr<S>() + s : nullptr,
                      ln ? stats[3].data_ptr<S>() + s : nullptr,
                      m == nullptr ? nullptr : m + s, B, H, eps);
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
TensorList lstm_backward(Tensor dgates, Tensor k, Tensor f, Tensor w, Tensor dh, Tensor dc,
                         OptTensor after, OptTensor after_c, OptTensor mask, Tensor c,
                         OptTensor a_hh,
                         OptTensor g_hh, OptTensor g_c, OptTensor b_c, TensorList stats) {
  const int64_t T = dgates.size(0), B = dgates.size(1), H = k.size(2);
  const bool ln = a_hh.has_value();
  Tensor dg_hh, dg_c, db_c;
  if (ln) {
    dg_hh = at::zeros({4 * H}, dgates.options());
    dg_c = at::zeros({H}, dgates.options());
    if (b_c.has_value()) db_c = at::zeros({H}, dgates.options());
  }
  Tensor dct = at::empty({H}, dgates.options());
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
      backward_step<S>(
          dh.data_ptr<S>(), dc.data_ptr<S>(), k.data_ptr<S>() + s * H, f.data_ptr<S>() + s * H,
          dg.data_ptr<S>(), ln ? c.data_ptr<S>() + (s + B) * H : nullptr,
          ln ? a_hh->data_ptr<S>() + s * 4 * H : nullptr, ptr_or_null<S>(g_hh),
          ln ? stats[0].data_ptr<S>() + s : nullptr, ln ? stats[1].data_ptr<S>() + s : nullptr,
          ptr_or_null<S>(g_c), ln ? stats[2].data_ptr<S>() + s : nullptr,
          ln ? stats[3].data_ptr<S>() + s : nullptr, ln ? dg_hh.data_ptr<S>() : nullptr,
          ln ? dg_c.data_ptr<S>() : nullptr, db_c.defined() ? db_c.data_ptr<S>() : nullptr,
          dc_prev.data_ptr<S>(), dct.data_ptr<S>(), B, H);
      const Tensor dpre = ln ? a_hh->select(0, t) : dg;
      dh = base.defined() ? at::addmm(base, dpre, w) : at::mm(dpre, w);
      dc = base_c.defined() ? dc_prev + base_c : dc_prev;
    }
  });
  TensorList out = {dh, dc};
  if (ln) {
    out.push_back(dg_hh);
    out.push_back(dg_c);
    if (db_c.defined()) out.push_back(db_c);
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
TensorList gru_forward(Tensor gates, Tensor h, Tensor gh4, Tensor wt, OptTensor b_hh,
                       OptTensor mask, OptTensor a_hh, OptTensor g_hh, double eps) {
  const int64_t T = gates.size(0), B = gates.size(1), H = h.size(2);
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
      S* a = nullptr;
      if (ln) {
        Tensor at_ = a_hh->select(0, t);
        at::mm_out(at_, h.select(0, t), wt);
        a = at_.data_ptr<S>();
      } else if (b_hh.has_value()) {
        at::addmm_out(gh, *b_hh, h.select(0, t), wt);
      } else {
        at::mm_out(gh, h.select(0, t), wt);
      }
      const int64_t s = t * B;
      gru_forward_step<S>(gates.select(0, t).data_ptr<S>(), gh.data_ptr<S>(), a,
                          ptr_or_null<S>(g_hh), ptr_or_null<S>(b_hh), hp + s * H,
                          hp + (s + B) * H, ln ? stats[0].data_ptr<S>() + s : nullptr,
                          ln ? stats[1].data_ptr<S>() + s : nullptr,
                          m == nullptr ? nullptr : m + s, B, H, eps);
    }
  });
  return stats;
}

// GRU (reset after) backward over all steps, from the last state's gradient dh.
//   gh4 (T, B, 4H): GRUAfterKernel.start_backward's factors, multiplied by each step's dh.
//   gates (T, B, 3H): r, z, n. w (3H, H). after, mask as lstm_backward.
//   With layer norm: a_hh (T, B, 3H) (overwritten with its gradient), g_hh, stats as
//   gru_forward returns. Returns dh_0 and, with layer norm, the gain's gradient.
TensorList gru_backward(Tensor gh4, Tensor gates, Tensor w, Tensor dh, OptTensor after,
                        OptTensor mask, OptTensor a_hh, OptTensor g_hh, TensorList stats) {
  const int64_t T = gates.size(0), B = gates.size(1), H = dh.size(1);
  const bool ln = a_hh.has_value();
  Tensor dg_hh = ln ? at::zeros({3 * H}, gates.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_backward", [&] {
    using S = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      Tensor base = pass_through(dh, mask, after, t);  // added to dL/dh_{t-1}
      dh = dh.contiguous();
      if (base.defined()) base = base.contiguous();
      Tensor direct = at::empty_like(dh);
      const int64_t s = t * B;
      gru_backward_step<S>(dh.data_ptr<S>(), gh4.data_ptr<S>() + s * 4 * H,
                           gates.data_ptr<S>() + s * 3 * H,
                           base.defined() ? base.data_ptr<S>() : nullptr, direct.data_ptr<S>(),
                           ln ? a_hh->data_ptr<S>() + s * 3 * H : nullptr, ptr_or_null<S>(g_hh),
                           ln ? stats[0].data_ptr<S>() + s : nullptr,
                           ln ? stats[1].data_ptr<S>() + s : nullptr,
                           ln ? dg_hh.data_ptr<S>() : nullptr, B, H);
      const Tensor dpre = ln ? a_hh->select(0, t) : gh4.select(0, t).narrow(-1, 0, 3 * H);
      dh = at::addmm(direct, dpre, w);
    }
  });
  TensorList out = {dh};
  if (ln) out.push_back(dg_hh);
  return out;
}

// The scan engine's linear recurrence (rnnkit/engines/scan.py, LinearScan): forward
// c_t = a_t * c_{t-1} + b_t and backward g_t = dL/dc_t + a_{t+1} * g_{t+1}, over N = B x H
// independent columns: each thread takes a block of columns through all T steps.
namespace {

template <typename S>
void scan_forward_cols(const S* a, const S* b, const S* c0, S* c, int64_t T, int64_t N,
                       int64_t lo, int64_t hi) {
  for (int64_t t = 0; t < T; ++t) {
    const S* prev = t ? c + (t - 1) * N : c0;
    const S* at = a + t * N;
    const S* bt = b + t * N;
    S* ct = c + t * N;
    for (int64_t i = lo; i < hi; ++i) ct[i] = at[i] * prev[i] + bt[i];
  }
}

template <typename S>
void scan_backward_cols(const S* a, const S* grad, S* g, int64_t T, int64_t N, int64_t lo,
                        int64_t hi) {
  const S* last = grad + (T - 1) * N;
  S* gl = g + (T - 1) * N;
  for (int64_t i = lo; i < hi; ++i) gl[i] = last[i];
  for (int64_t t = T - 2; t >= 0; --t) {
    const S* an = a + (t + 1) * N;
    const S* gn = g + (t + 1) * N;
    const S* dt = grad + t * N;
    S* gt = g + t * N;
    for (int64_t i = lo; i < hi; ++i) gt[i] = dt[i] + an[i] * gn[i];
  }
}

}  // namespace

// a, b (T, B, H) and c0 (B, H), contiguous, of one floating type: c (T, B, H).
Tensor scan_forward(const Tensor& a, const Tensor& b, const Tensor& c0) {
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && c0.is_contiguous(),
              "scan_forward: contiguous tensors expected");
  auto c = at::empty_like(b);
  const int64_t T = a.size(0), N = c0.numel();
  if (T == 0) return c;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "scan_forward", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    const scalar_t* p0 = c0.data_ptr<scalar_t>();
    scalar_t* pc = c.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4096, [&](int64_t lo, int64_t hi) {
      scan_forward_cols(pa, pb, p0, pc, T, N, lo, hi);
    });
  });
  return c;
}

// a and dL/dc (T, B, H), contiguous: g = dL/db (T, B, H), the gradient reaching each c_t.
Tensor scan_backward(const Tensor& a, const Tensor& grad) {
  TORCH_CHECK(a.is_contiguous() && grad.is_contiguous(),
              "scan_backward: contiguous tensors expected");
  auto g = at::empty_like(grad);
  const int64_t T = a.size(0), N = T ? a.numel() / T : 0;
  if (T == 0) return g;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "scan_backward", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pd = grad.data_ptr<scalar_t>();
    scalar_t* pg = g.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4096, [&](int64_t lo, int64_t hi) {
      scan_backward_cols(pa, pd, pg, T, N, lo, hi);
    });
  });
  return g;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward, "scan engine: c_t = a_t * c_{t-1} + b_t");
  m.def("scan_backward", &scan_backward, "scan engine: g_t = dc_t + a_{t+1} * g_{t+1}");
  m.def("gru_forward", &gru_forward, "bptt GRU (reset after) forward loop");
  m.def("gru_backward", &gru_backward, "bptt GRU (reset after) backward loop");
  m.def("lstm_forward", &lstm_forward, "bptt LSTM forward loop");
  m.def("lstm_backward", &lstm_backward, "bptt LSTM backward loop");
}
