// The LSTM and GRU recurrences on the CPU as XLA FFI calls: each runs all T
// steps of a float32 layer, forward (jaxcls_{lstm,gru}_forward) or back
// (jaxcls_{lstm,gru}_backward). jaxcls/cpu_rnn.py builds this file with the
// system's C++ compiler, loads it and registers the targets; the math is
// LSTMCell's and GRUCell's (jaxcls/recurrent.py), and the tests compare the
// two paths.
//
// Why a kernel of our own: under XLA:CPU each of the 2 x T steps is ~15
// small kernels around a single-threaded matmul, and XLA runs them one after
// another. Here each step is one matmul plus one fused pass over the gates,
// and the batch is split into row blocks that run the whole sequence at once
// on XLA's intra-op threads (the rows of a recurrent layer never interact).
//
// Every row is computed the same way whichever block it falls in (same
// micro-kernel arithmetic, same order of sums), so results do not depend on
// the number of threads. Compiled without -ffast-math for that reason (GCC
// still contracts a * b + c into one FMA, the same way in every template
// instance; the exact bits depend on the compiler, which is part of the
// build's cache key); the gate nonlinearities use the vectorisable exp
// below instead of libm's.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Aliases: the handler macros below cannot take a comma inside <>.
using Array2 = ffi::Buffer<ffi::F32, 2>;
using Array3 = ffi::Buffer<ffi::F32, 3>;
using Array1 = ffi::Buffer<ffi::F32, 1>;
using Result2 = ffi::ResultBuffer<ffi::F32, 2>;
using Result3 = ffi::ResultBuffer<ffi::F32, 3>;

namespace {

// ---------------------------------------------------------------- math

// exp(x) to a few ulp (Cephes' expf: x = k ln2 + r, a degree-6 polynomial
// in r, times 2^k built from its bits). Plain arithmetic, so loops over it
// vectorise; NaN in gives NaN out.
inline float Exp(float x) {
  float y = x > 88.0f ? 88.0f : x;
  y = y < -87.0f ? -87.0f : y;
  // k = round(y / ln 2): adding and subtracting 1.5 * 2^23 rounds to an
  // integer (|y / ln 2| < 2^22), and unlike floorf it vectorises without
  // -fno-trapping-math.
  float k = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  k = k == k ? k : 0.0f;  // NaN: any k, the polynomial carries the NaN
  float r = y - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

// tanh(x) = (1 - e^-2|x|) / (1 + e^-2|x|) with x's sign; near 0 (where 1 -
// e^-2|x| cancels) its odd Taylor polynomial, exact to float rounding there.
inline float Tanh(float x) {
  float a = x < 0.0f ? -x : x;
  float t = Exp(-2.0f * a);
  float big = (1.0f - t) / (1.0f + t);
  float x2 = x * x;
  float small =
      a * (1.0f + x2 * (-0.333333333f +
                        x2 * (0.133333333f +
                              x2 * (-0.0539682540f + x2 * 0.0218694885f))));
  float y = a < 0.25f ? small : big;
  return x < 0.0f ? -y : y;
}

// ---------------------------------------------------------------- matmul

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v16a __attribute__((vector_size(64), __may_alias__));
// The same vector at any float's address, allowed to alias floats.
typedef float v16u __attribute__((vector_size(64), aligned(4), __may_alias__));

// One 64-byte load or store, not a memcpy: where GCC tunes for 256-bit
// vectors (-march=native on Intel cores) a 64-byte memcpy becomes two
// 32-byte moves through the stack and a stalled 64-byte reload
// (conv_cpu.cc, benchmarks/NOTES.md, issue 26).
inline v16 Load(const float* p) { return *reinterpret_cast<const v16u*>(p); }

inline void Store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

// B (K x N, N a multiple of 16) packed once per call: column panels of 32
// floats (the last one 16 wide if N % 32 == 16), each K rows deep, stored
// one after another on 64-byte boundaries.
struct Packed {
  int64_t k = 0, n = 0;
  float* data = nullptr;
  Packed(const Packed&) = delete;
  Packed& operator=(const Packed&) = delete;
  Packed(int64_t k_, int64_t n_) : k(k_), n(n_) {
    size_t bytes = (sizeof(float) * k * n + 63) / 64 * 64;
    data = static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
  }
  ~Packed() { std::free(data); }
  bool ok() const { return data != nullptr; }
};

// Shapes must match exactly: the kernels index raw memory.
bool Same(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> want) {
  return dims.size() == want.size() &&
         std::equal(dims.begin(), dims.end(), want.begin());
}

ffi::Error OutOfMemory() {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                    "jaxcls RNN kernel: out of memory for packed weights");
}

// B(r, j) = src[r * row_stride + j * col_stride].
void Pack(const float* src, int64_t row_stride, int64_t col_stride,
          Packed& out) {
  float* dst = out.data;
  for (int64_t j0 = 0; j0 < out.n; j0 += 32) {
    int64_t width = std::min<int64_t>(32, out.n - j0);
    for (int64_t r = 0; r < out.k; ++r) {
      for (int64_t j = 0; j < width; ++j) {
        *dst++ = src[r * row_stride + (j0 + j) * col_stride];
      }
    }
  }
}

// C[0:MR, 0:16*NV] += A[0:MR, 0:K] @ panel, accumulating over k in order.
template <int MR, int NV>
inline void Micro(const float* a, int64_t lda, const float* panel, int64_t k,
                  float* c, int64_t ldc) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) acc[i][v] = Load(c + i * ldc + 16 * v);
  }
  for (int64_t r = 0; r < k; ++r) {
    v16 b[NV];
    for (int v = 0; v < NV; ++v) {
      b[v] = *reinterpret_cast<const v16a*>(panel + (r * NV + v) * 16);
    }
    for (int i = 0; i < MR; ++i) {
      float s = a[i * lda + r];
      for (int v = 0; v < NV; ++v) acc[i][v] += s * b[v];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) Store(c + i * ldc + 16 * v, acc[i][v]);
  }
}

template <int NV>
void Panel(const float* a, int64_t lda, int64_t m, const float* panel,
           int64_t k, float* c, int64_t ldc) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8) {
    Micro<8, NV>(a + i * lda, lda, panel, k, c + i * ldc, ldc);
  }
  for (; i < m; ++i) Micro<1, NV>(a + i * lda, lda, panel, k, c + i * ldc, ldc);
}

// C (m x B.n, leading dimension ldc) += A (m x B.k, leading dimension lda) @ B.
void MatMulAdd(const float* a, int64_t lda, int64_t m, const Packed& b,
               float* c, int64_t ldc) {
  const float* panel = b.data;
  for (int64_t j0 = 0; j0 < b.n; j0 += 32) {
    if (b.n - j0 >= 32) {
      Panel<2>(a, lda, m, panel, b.k, c + j0, ldc);
      panel += 32 * b.k;
    } else {
      Panel<1>(a, lda, m, panel, b.k, c + j0, ldc);
      panel += 16 * b.k;
    }
  }
}

// ---------------------------------------------------------------- gates

// One step's gates for m rows, in place: a holds the pre-activations
// (i, f, g, o blocks of h) and gets the activations.
void ForwardGates(float* __restrict a, const float* __restrict c_prev,
                  float* __restrict c, float* __restrict h, int64_t m,
                  int64_t hidden) {
  const int64_t g4 = 4 * hidden;
  for (int64_t b = 0; b < m; ++b) {
    float* __restrict ab = a + b * g4;
    const float* __restrict cp = c_prev + b * hidden;
    float* __restrict cb = c + b * hidden;
    float* __restrict hb = h + b * hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) {
      float i = Sigmoid(ab[j]);
      float f = Sigmoid(ab[hidden + j]);
      float g = Tanh(ab[2 * hidden + j]);
      float o = Sigmoid(ab[3 * hidden + j]);
      ab[j] = i;
      ab[hidden + j] = f;
      ab[2 * hidden + j] = g;
      ab[3 * hidden + j] = o;
      float cc = f * cp[j] + i * g;
      cb[j] = cc;
      hb[j] = o * Tanh(cc);
    }
  }
}

// One step back: d_gates from the stored activations; d_c becomes the
// gradient into c_{t-1}. d_h is read (the carried gradient, before this
// step's output gradient d_h_out is added) and left for the matmul.
void BackwardGates(const float* __restrict a, const float* __restrict c,
                   const float* __restrict c_prev,
                   const float* __restrict d_h_out, float* __restrict d_gates,
                   float* __restrict d_c, const float* __restrict d_h,
                   int64_t m, int64_t hidden) {
  const int64_t g4 = 4 * hidden;
  for (int64_t b = 0; b < m; ++b) {
    const float* __restrict ab = a + b * g4;
    float* __restrict dg = d_gates + b * g4;
    const float* __restrict cb = c + b * hidden;
    const float* __restrict cp = c_prev + b * hidden;
    const float* __restrict dho = d_h_out + b * hidden;
    float* __restrict dc = d_c + b * hidden;
    const float* __restrict dh = d_h + b * hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) {
      float i = ab[j], f = ab[hidden + j], g = ab[2 * hidden + j],
            o = ab[3 * hidden + j];
      float grad_h = dh[j] + dho[j];
      float tc = Tanh(cb[j]);
      float grad_c = dc[j] + grad_h * o * (1.0f - tc * tc);
      dg[j] = grad_c * g * i * (1.0f - i);
      dg[hidden + j] = grad_c * cp[j] * f * (1.0f - f);
      dg[2 * hidden + j] = grad_c * i * (1.0f - g * g);
      dg[3 * hidden + j] = grad_h * tc * o * (1.0f - o);
      dc[j] = grad_c * f;
    }
  }
}

// One GRU step for m rows. x holds x_t W_i + b_i (r, z, n blocks of h), hh
// holds h_{t-1} W_h + b_h; acts gets r, z, n and hh's n block (the backward
// pass needs it: n = tanh(x_n + r * hh_n)).
void GruForwardGates(const float* __restrict x, const float* __restrict hh,
                     const float* __restrict h_prev, float* __restrict h,
                     float* __restrict acts, int64_t m, int64_t hidden) {
  const int64_t g3 = 3 * hidden, g4 = 4 * hidden;
  for (int64_t b = 0; b < m; ++b) {
    const float* __restrict xb = x + b * g3;
    const float* __restrict hb = hh + b * g3;
    const float* __restrict hp = h_prev + b * hidden;
    float* __restrict out = h + b * hidden;
    float* __restrict ab = acts + b * g4;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) {
      float r = Sigmoid(xb[j] + hb[j]);
      float z = Sigmoid(xb[hidden + j] + hb[hidden + j]);
      float h_n = hb[2 * hidden + j];
      float n = Tanh(xb[2 * hidden + j] + r * h_n);
      out[j] = (1.0f - z) * n + z * hp[j];
      ab[j] = r;
      ab[hidden + j] = z;
      ab[2 * hidden + j] = n;
      ab[3 * hidden + j] = h_n;
    }
  }
}

// One GRU step back: d_x (into x_t W_i + b_i) and d_hidden (into h W_h +
// b_h) from the stored activations; d_h, the carried gradient, is read with
// this step's output gradient added and left as d_h * z, to which the matmul
// adds d_hidden @ W_h^T.
void GruBackwardGates(const float* __restrict acts,
                      const float* __restrict h_prev,
                      const float* __restrict d_h_out, float* __restrict d_x,
                      float* __restrict d_hidden, float* __restrict d_h,
                      int64_t m, int64_t hidden) {
  const int64_t g3 = 3 * hidden, g4 = 4 * hidden;
  for (int64_t b = 0; b < m; ++b) {
    const float* __restrict ab = acts + b * g4;
    const float* __restrict hp = h_prev + b * hidden;
    const float* __restrict dho = d_h_out + b * hidden;
    float* __restrict dx = d_x + b * g3;
    float* __restrict dhid = d_hidden + b * g3;
    float* __restrict dh = d_h + b * hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; ++j) {
      float r = ab[j], z = ab[hidden + j], n = ab[2 * hidden + j],
            h_n = ab[3 * hidden + j];
      float grad_h = dh[j] + dho[j];
      float d_n = grad_h * (1.0f - z) * (1.0f - n * n);
      float d_r = d_n * h_n * r * (1.0f - r);
      float d_z = grad_h * (hp[j] - n) * z * (1.0f - z);
      dx[j] = d_r;
      dx[hidden + j] = d_z;
      dx[2 * hidden + j] = d_n;
      dhid[j] = d_r;
      dhid[hidden + j] = d_z;
      dhid[2 * hidden + j] = d_n * r;
      dh[j] = grad_h * z;
    }
  }
}

// ---------------------------------------------------------------- threads

// Runs fn(b0, m) for each row block [b0, b0 + m) of a batch: blocks of at
// least 8 rows, one per intra-op thread, run on the caller and XLA's
// intra-op pool. The caller claims blocks as well, so it only ever waits for
// blocks already running: no deadlock when the pool's threads are busy.
template <typename Fn>
void ForEachRowBlock(ffi::ThreadPool& pool, int64_t batch, const Fn& fn) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>(threads, batch / 8));
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, parts, batch, &fn]() {
    for (int64_t p; (p = state->next.fetch_add(1)) < parts;) {
      const int64_t b0 = batch * p / parts;
      fn(b0, batch * (p + 1) / parts - b0);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  // A task that starts after the caller returned finds no block left and
  // touches nothing but `state`, which it shares.
  for (int64_t k = 1; k < parts; ++k) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < parts) {
    std::this_thread::yield();
  }
}

ffi::Error CheckShapes(int64_t hidden, int64_t g4, int64_t batch,
                       ffi::Span<const int64_t> w_h,
                       ffi::Span<const int64_t> c0,
                       ffi::Span<const int64_t> h0) {
  if (g4 % 4 != 0 || hidden % 16 != 0 || w_h.size() != 2 ||
      w_h[0] != hidden || w_h[1] != g4 || c0.size() != 2 ||
      c0[0] != batch || c0[1] != hidden || h0.size() != 2 ||
      h0[0] != batch || h0[1] != hidden) {
    return ffi::Error::InvalidArgument(
        "jaxcls LSTM kernel: shapes do not fit (T, B, 4H) gates, (H, 4H) "
        "w_h and (B, H) states with H a multiple of 16");
  }
  return ffi::Error::Success();
}

}  // namespace

// gates_x (T, B, 4H) = x_t W_i + b, w_h (H, 4H), c0 and h0 (B, H)
//   -> hs (T, B, H), cs (T, B, H), acts (T, B, 4H): i, f, g, o per step.
static ffi::Error LstmForward(ffi::ThreadPool pool,
                              Array3 gates_x,
                              Array2 w_h,
                              Array2 c0,
                              Array2 h0,
                              Result3 hs,
                              Result3 cs,
                              Result3 acts) {
  auto dims = gates_x.dimensions();
  const int64_t steps = dims[0], batch = dims[1], g4 = dims[2],
                hidden = g4 / 4;
  if (ffi::Error e = CheckShapes(hidden, g4, batch, w_h.dimensions(),
                                 c0.dimensions(), h0.dimensions());
      e.failure()) {
    return e;
  }
  Packed w(hidden, g4);
  if (!w.ok()) return OutOfMemory();
  Pack(w_h.typed_data(), g4, 1, w);
  const float* gx = gates_x.typed_data();
  const float* c_init = c0.typed_data();
  const float* h_init = h0.typed_data();
  float* hs_ = hs->typed_data();
  float* cs_ = cs->typed_data();
  float* acts_ = acts->typed_data();
  ForEachRowBlock(pool, batch, [&](int64_t b0, int64_t m) {
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t row = t * batch + b0;
      float* a = acts_ + row * g4;
      std::memcpy(a, gx + row * g4, sizeof(float) * m * g4);
      const float* h_prev =
          t == 0 ? h_init + b0 * hidden : hs_ + (row - batch) * hidden;
      const float* c_prev =
          t == 0 ? c_init + b0 * hidden : cs_ + (row - batch) * hidden;
      MatMulAdd(h_prev, hidden, m, w, a, g4);
      ForwardGates(a, c_prev, cs_ + row * hidden, hs_ + row * hidden, m,
                   hidden);
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_lstm_forward, LstmForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array3>()
                                  .Arg<Array2>()
                                  .Arg<Array2>()
                                  .Arg<Array2>()
                                  .Ret<Array3>()
                                  .Ret<Array3>()
                                  .Ret<Array3>());

// acts (T, B, 4H), cs (T, B, H), c0 (B, H), w_h (H, 4H), d_hs (T, B, H),
// d_c and d_h (B, H) after the last step
//   -> d_gates (T, B, 4H) (pre-activation gradients), d_c0, d_h0 (B, H).
static ffi::Error LstmBackward(ffi::ThreadPool pool,
                               Array3 acts,
                               Array3 cs,
                               Array2 c0,
                               Array2 w_h,
                               Array3 d_hs,
                               Array2 d_c_last,
                               Array2 d_h_last,
                               Result3 d_gates,
                               Result2 d_c0,
                               Result2 d_h0) {
  auto dims = acts.dimensions();
  const int64_t steps = dims[0], batch = dims[1], g4 = dims[2],
                hidden = g4 / 4;
  if (ffi::Error e = CheckShapes(hidden, g4, batch, w_h.dimensions(),
                                 c0.dimensions(), d_h_last.dimensions());
      e.failure()) {
    return e;
  }
  if (!Same(cs.dimensions(), {steps, batch, hidden}) ||
      !Same(d_hs.dimensions(), {steps, batch, hidden}) ||
      !Same(d_c_last.dimensions(), {batch, hidden})) {
    return ffi::Error::InvalidArgument(
        "jaxcls LSTM kernel: cs, d_hs and d_c do not fit the activations");
  }
  Packed w_t(g4, hidden);  // W_h^T, for d_h = d_gates @ W_h^T
  if (!w_t.ok()) return OutOfMemory();
  Pack(w_h.typed_data(), 1, g4, w_t);
  const float* acts_ = acts.typed_data();
  const float* cs_ = cs.typed_data();
  const float* c_init = c0.typed_data();
  const float* d_hs_ = d_hs.typed_data();
  const float* d_c_in = d_c_last.typed_data();
  const float* d_h_in = d_h_last.typed_data();
  float* d_gates_ = d_gates->typed_data();
  float* d_c_ = d_c0->typed_data();
  float* d_h_ = d_h0->typed_data();
  ForEachRowBlock(pool, batch, [&](int64_t b0, int64_t m) {
    float* d_c = d_c_ + b0 * hidden;
    float* d_h = d_h_ + b0 * hidden;
    std::memcpy(d_c, d_c_in + b0 * hidden, sizeof(float) * m * hidden);
    std::memcpy(d_h, d_h_in + b0 * hidden, sizeof(float) * m * hidden);
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t row = t * batch + b0;
      const float* c_prev =
          t == 0 ? c_init + b0 * hidden : cs_ + (row - batch) * hidden;
      float* dg = d_gates_ + row * g4;
      BackwardGates(acts_ + row * g4, cs_ + row * hidden, c_prev,
                    d_hs_ + row * hidden, dg, d_c, d_h, m, hidden);
      std::memset(d_h, 0, sizeof(float) * m * hidden);
      MatMulAdd(dg, g4, m, w_t, d_h, hidden);
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_lstm_backward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array3>()
                                  .Arg<Array3>()
                                  .Arg<Array2>()
                                  .Arg<Array2>()
                                  .Arg<Array3>()
                                  .Arg<Array2>()
                                  .Arg<Array2>()
                                  .Ret<Array3>()
                                  .Ret<Array2>()
                                  .Ret<Array2>());

// x (T, B, 3H) = x_t W_i + b_i, w_h (H, 3H), b_h (3H), h0 (B, H)
//   -> hs (T, B, H), acts (T, B, 4H): r, z, n and (h W_h + b_h)'s n block.
static ffi::Error GruForward(ffi::ThreadPool pool, Array3 x, Array2 w_h,
                             Array1 b_h, Array2 h0,
                             Result3 hs, Result3 acts) {
  auto dims = x.dimensions();
  const int64_t steps = dims[0], batch = dims[1], g3 = dims[2],
                hidden = g3 / 3;
  auto w = w_h.dimensions(), h = h0.dimensions();
  if (g3 % 3 != 0 || hidden % 16 != 0 || w[0] != hidden || w[1] != g3 ||
      b_h.dimensions()[0] != g3 || h[0] != batch || h[1] != hidden) {
    return ffi::Error::InvalidArgument(
        "jaxcls GRU kernel: shapes do not fit (T, B, 3H) inputs, (H, 3H) "
        "w_h, (3H,) b_h and a (B, H) state with H a multiple of 16");
  }
  Packed packed(hidden, g3);
  if (!packed.ok()) return OutOfMemory();
  Pack(w_h.typed_data(), g3, 1, packed);
  const float* x_ = x.typed_data();
  const float* bias = b_h.typed_data();
  const float* h_init = h0.typed_data();
  float* hs_ = hs->typed_data();
  float* acts_ = acts->typed_data();
  // h W_h + b_h of the current step, every block's rows: allocated here,
  // where running out of memory can still be an error, not in the tasks.
  Packed scratch(batch, g3);
  if (!scratch.ok()) return OutOfMemory();
  ForEachRowBlock(pool, batch, [&](int64_t b0, int64_t m) {
    float* hh = scratch.data + b0 * g3;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t row = t * batch + b0;
      const float* h_prev =
          t == 0 ? h_init + b0 * hidden : hs_ + (row - batch) * hidden;
      for (int64_t b = 0; b < m; ++b) {
        std::memcpy(hh + b * g3, bias, sizeof(float) * g3);
      }
      MatMulAdd(h_prev, hidden, m, packed, hh, g3);
      GruForwardGates(x_ + row * g3, hh, h_prev, hs_ + row * hidden,
                      acts_ + row * 4 * hidden, m, hidden);
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_gru_forward, GruForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array3>()
                                  .Arg<Array2>()
                                  .Arg<Array1>()
                                  .Arg<Array2>()
                                  .Ret<Array3>()
                                  .Ret<Array3>());

// acts (T, B, 4H), hs (T, B, H), h0 (B, H), w_h (H, 3H), d_hs (T, B, H),
// d_h (B, H) after the last step
//   -> d_x (T, B, 3H), d_hidden (T, B, 3H), d_h0 (B, H).
static ffi::Error GruBackward(ffi::ThreadPool pool, Array3 acts, Array3 hs,
                              Array2 h0, Array2 w_h, Array3 d_hs,
                              Array2 d_h_last, Result3 d_x, Result3 d_hidden,
                              Result2 d_h0) {
  auto dims = acts.dimensions();
  const int64_t steps = dims[0], batch = dims[1], hidden = dims[2] / 4,
                g3 = 3 * hidden;
  auto w = w_h.dimensions(), h = h0.dimensions();
  if (dims[2] % 4 != 0 || hidden % 16 != 0 || w[0] != hidden ||
      w[1] != g3 || h[0] != batch || h[1] != hidden) {
    return ffi::Error::InvalidArgument(
        "jaxcls GRU kernel: shapes do not fit (T, B, 4H) activations, "
        "(H, 3H) w_h and a (B, H) state with H a multiple of 16");
  }
  if (!Same(hs.dimensions(), {steps, batch, hidden}) ||
      !Same(d_hs.dimensions(), {steps, batch, hidden}) ||
      !Same(d_h_last.dimensions(), {batch, hidden})) {
    return ffi::Error::InvalidArgument(
        "jaxcls GRU kernel: hs, d_hs and d_h do not fit the activations");
  }
  Packed w_t(g3, hidden);  // W_h^T, for d_h += d_hidden @ W_h^T
  if (!w_t.ok()) return OutOfMemory();
  Pack(w_h.typed_data(), 1, g3, w_t);
  const float* acts_ = acts.typed_data();
  const float* hs_ = hs.typed_data();
  const float* h_init = h0.typed_data();
  const float* d_hs_ = d_hs.typed_data();
  const float* d_h_in = d_h_last.typed_data();
  float* d_x_ = d_x->typed_data();
  float* d_hidden_ = d_hidden->typed_data();
  float* d_h_ = d_h0->typed_data();
  ForEachRowBlock(pool, batch, [&](int64_t b0, int64_t m) {
    float* d_h = d_h_ + b0 * hidden;
    std::memcpy(d_h, d_h_in + b0 * hidden, sizeof(float) * m * hidden);
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t row = t * batch + b0;
      const float* h_prev =
          t == 0 ? h_init + b0 * hidden : hs_ + (row - batch) * hidden;
      float* dhid = d_hidden_ + row * g3;
      GruBackwardGates(acts_ + row * 4 * hidden, h_prev, d_hs_ + row * hidden,
                       d_x_ + row * g3, dhid, d_h, m, hidden);
      MatMulAdd(dhid, g3, m, w_t, d_h, hidden);
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_gru_backward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array3>()
                                  .Arg<Array3>()
                                  .Arg<Array2>()
                                  .Arg<Array2>()
                                  .Arg<Array3>()
                                  .Arg<Array2>()
                                  .Ret<Array3>()
                                  .Ret<Array3>()
                                  .Ret<Array2>());
