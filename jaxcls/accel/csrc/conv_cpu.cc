// A CNN block on the CPU as XLA FFI calls: a 3x3 'SAME' stride-1
// convolution (NHWC input, HWIO kernel, float32) + bias + ReLU + 2x2 max
// pooling, forward and back. jaxcls/cpu_conv.py builds this file with the
// system's C++ compiler, loads it and registers the targets; the math is
// kernels.Conv + activations.relu + kernels.max_pool_2x2's, and the tests
// compare the two paths, values and every gradient.
//
//   jaxcls_conv_block_forward   x, w, b -> pooled, route
//   jaxcls_conv_block_infer     x, w, b -> pooled
//   jaxcls_conv_block_backward  x, route, d_pooled -> d_zp, d_w, d_b
//   jaxcls_conv_block_weight_grad  x, route, d_pooled -> d_w, d_b
//   jaxcls_conv_input_grad      d_zp, w -> d_x
//
// Why a kernel of our own: under XLA:CPU this block is a convolution on
// Eigen, ~10 elementwise fusions at full resolution (the ReLU mask, the
// pool's routing, each recomputing the first convolution) and, for the
// weight gradient, two layout transposes. Here each pass is one
// register-blocked implicit matmul with the ReLU and pooling fused in, and
// the batch is split over XLA's intra-op threads.
//
// Layout trick: an image is stored zero-padded, (H+2) x (W+2) pixels, and
// the output is computed on rows of W+2 pixels (the last two of each row are
// thrown away). Then the 9 taps of every output pixel are at the same 9
// offsets, so 8 neighbouring output pixels form one micro-block whatever row
// they are on.
//
// Bits: each image's forward and input gradient are computed the same way
// whichever thread runs them; the weight and bias gradients sum fixed
// chunks of 8 images, then the chunks in order, so no result depends on the
// number of threads. Compiled without -ffast-math (GCC contracts a * b + c
// into FMAs, the same way in every instance).
//
// Written for GCC (vector extensions: `?:` on vectors, __builtin_shuffle);
// with another compiler a failed build means one warning and XLA's ops.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

using Array1 = ffi::Buffer<ffi::F32, 1>;
using Array3 = ffi::Buffer<ffi::F32, 3>;
using Array4 = ffi::Buffer<ffi::F32, 4>;
using Bytes4 = ffi::Buffer<ffi::U8, 4>;
using ResultBytes4 = ffi::ResultBuffer<ffi::U8, 4>;
using Result1 = ffi::ResultBuffer<ffi::F32, 1>;
using Result3 = ffi::ResultBuffer<ffi::F32, 3>;
using Result4 = ffi::ResultBuffer<ffi::F32, 4>;

namespace {

typedef float v16 __attribute__((vector_size(64)));
// The same vector at any float's address, allowed to alias floats.
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

// One 64-byte load or store, not a memcpy: where GCC tunes for 256-bit
// vectors (-march=native on Intel cores) it expands a 64-byte memcpy into
// two 32-byte moves through the stack, and the 64-byte reload after two
// 32-byte stores stalls on store forwarding; the accumulators then live on
// the stack too. That made this kernel 2-3x slower than XLA's ops on an
// Intel Xeon (benchmarks/NOTES.md, issue 26).
inline v16 Load(const float* p) { return *reinterpret_cast<const v16u*>(p); }

inline void Store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

// 64-byte aligned float storage, zero-filled.
struct Floats {
  float* data = nullptr;
  Floats(const Floats&) = delete;
  Floats& operator=(const Floats&) = delete;
  explicit Floats(int64_t n) {
    size_t bytes = (sizeof(float) * std::max<int64_t>(n, 1) + 63) / 64 * 64;
    data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (data != nullptr) std::memset(data, 0, bytes);
  }
  ~Floats() { std::free(data); }
  bool ok() const { return data != nullptr; }
};

ffi::Error OutOfMemory() {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                    "jaxcls conv kernel: out of memory for scratch buffers");
}

// The geometry of one layer: input H x W x cin, output H x W x cout.
struct Shape {
  int64_t batch, h, w, cin, cout;
  int64_t pw() const { return w + 2; }                 // padded row length
  int64_t rows() const { return h * pw(); }            // output rows computed
  int64_t padded() const { return (h + 2) * pw() + 8; }  // padded pixels
  // Offset (in pixels) of tap (dy, dx) from an output pixel's row q.
  int64_t tap(int t) const { return (t / 3) * pw() + t % 3; }
};

// Weights (K x N, N = cout a multiple of 16) as panels of 16 columns, K
// rows deep, one after another: B(r, j) = src[r * row_stride + j * col].
void Pack(const float* src, int64_t k, int64_t n, int64_t row_stride,
          int64_t col_stride, float* dst) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t j = 0; j < 16; ++j) {
        *dst++ = src[r * row_stride + (j0 + j) * col_stride];
      }
    }
  }
}

// C[0:MR, 0:16*NV] = sum over the 9 taps and c channels of
// A[i, tap, ch] * B[(tap, ch), :], where A[i, tap, ch] = a[(i + off[tap]) * c
// + ch] (pixel rows of c channels) and B's panels hold 16 * NV columns.
template <int MR, int NV>
inline void ConvMicro(const float* a, const int64_t* off, int64_t c,
                      const float* panel, int64_t panel_stride, float* out,
                      int64_t ldo) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) acc[i][v] = v16{};
  }
  for (int t = 0; t < 9; ++t) {
    const float* at = a + off[t] * c;
    const float* bt = panel + t * c * 16;
    for (int64_t r = 0; r < c; ++r) {
      v16 b[NV];
      for (int v = 0; v < NV; ++v) b[v] = Load(bt + r * 16 + v * panel_stride);
      for (int i = 0; i < MR; ++i) {
        float s = at[i * c + r];
        for (int v = 0; v < NV; ++v) acc[i][v] += s * b[v];
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) Store(out + i * ldo + 16 * v, acc[i][v]);
  }
}

// out (s.rows() x n) = the convolution of one padded image xp (c channels)
// with packed weights (9c x n), on the padded-row grid.
template <int NV>
void ConvPanels(const Shape& s, const float* xp, int64_t c, const float* packed,
                int64_t n, float* out) {
  int64_t off[9];
  for (int t = 0; t < 9; ++t) off[t] = s.tap(t);
  const int64_t k = 9 * c, rows = s.rows();
  // 16 accumulators either way: 16 rows of one vector or 8 rows of two.
  constexpr int MR = NV == 1 ? 16 : 8;
  for (int64_t j0 = 0; j0 < n; j0 += 16 * NV) {
    const float* panel = packed + j0 * k;
    int64_t q = 0;
    for (; q + MR <= rows; q += MR) {
      ConvMicro<MR, NV>(xp + q * c, off, c, panel, 16 * k, out + q * n + j0,
                        n);
    }
    for (; q + 8 <= rows; q += 8) {
      ConvMicro<8, NV>(xp + q * c, off, c, panel, 16 * k, out + q * n + j0, n);
    }
    for (; q < rows; ++q) {
      ConvMicro<1, NV>(xp + q * c, off, c, panel, 16 * k, out + q * n + j0, n);
    }
  }
}

void Conv(const Shape& s, const float* xp, int64_t c, const float* packed,
          int64_t n, float* out) {
  if (n % 32 == 0) {
    ConvPanels<2>(s, xp, c, packed, n, out);
  } else {
    ConvPanels<1>(s, xp, c, packed, n, out);
  }
}

// One image (h x w x c) into the zero-padded grid; the border stays zero.
void PadImage(const Shape& s, const float* x, int64_t c, float* xp) {
  for (int64_t y = 0; y < s.h; ++y) {
    std::memcpy(xp + ((y + 1) * s.pw() + 1) * c, x + y * s.w * c,
                sizeof(float) * s.w * c);
  }
}

// Up to 4 blocks per thread: a thread that starts late (XLA's pool busy
// elsewhere) leaves its blocks to the others.
int64_t Parts(ffi::ThreadPool& pool, int64_t n, int64_t grain) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(4 * threads, n / grain));
}

// Runs fn(part, i0, count) for blocks [i0, i0 + count) of n items, at least
// `grain` items per block, Parts(pool, n, grain) blocks (part < that: an
// index into per-block scratch), on the caller and XLA's pool. The caller claims blocks too, so it only waits for blocks
// already running.
template <typename Fn>
void ForEachBlock(ffi::ThreadPool& pool, int64_t n, int64_t grain,
                  const Fn& fn) {
  const int64_t parts = Parts(pool, n, grain);
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, parts, n, &fn]() {
    for (int64_t p; (p = state->next.fetch_add(1)) < parts;) {
      const int64_t i0 = n * p / parts;
      fn(p, i0, n * (p + 1) / parts - i0);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t k = 1; k < parts; ++k) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < parts) {
    std::this_thread::yield();
  }
}


typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint8_t v16b __attribute__((vector_size(16)));

// max as jnp.maximum computes it, 16 lanes: a NaN on either side wins.
inline v16 Max(v16 a, v16 b) { return (a != a) | (a > b) ? a : b; }

inline v16 Splat(float f) { return v16{} + f; }

// One image's bias + ReLU + 2x2 max pool from z (the convolution on the
// padded-row grid): pooled (h/2 x w/2 x n) and, if route is not null, how
// the backward pass turns d_pooled into d_z (h x w x n): route holds the
// number of ties among the window's maxima on those maxima where z > 0,
// else 0, and d_z = d_pooled * (1/ties) there, else 0 -- autodiff's own
// gradient of max_pool_2x2(relu(z)) (kernels.max_pool_2x2, jax.nn.relu),
// in a byte instead of a float: a quarter of the memory traffic. A NaN
// maximum has no ties, so its window gets no gradient (autodiff: NaN where
// z > 0).
void BiasReluPool(const Shape& s, const float* z, const float* bias,
                  float* pooled, uint8_t* route) {
  const int64_t n = s.cout, pw = s.pw();
  const v16 zero{};
  for (int64_t py = 0; py < s.h / 2; ++py) {
    for (int64_t px = 0; px < s.w / 2; ++px) {
      const float* z00 = z + ((2 * py) * pw + 2 * px) * n;
      const float* z10 = z00 + pw * n;
      float* out = pooled + (py * (s.w / 2) + px) * n;
      uint8_t* r00 = route == nullptr
                         ? nullptr
                         : route + ((2 * py) * s.w + 2 * px) * n;
      for (int64_t c = 0; c < n; c += 16) {
        const v16 bb = Load(bias + c);
        const v16 a = Load(z00 + c) + bb, b = Load(z00 + n + c) + bb;
        const v16 d = Load(z10 + c) + bb, e = Load(z10 + n + c) + bb;
        const v16 ya = Max(a, zero), yb = Max(b, zero);
        const v16 yd = Max(d, zero), ye = Max(e, zero);
        const v16 m = Max(Max(ya, yb), Max(yd, ye));
        Store(out + c, m);
        if (route == nullptr) continue;
        const v16i ha = ya == m, hb = yb == m, hd = yd == m, he = ye == m;
        const v16i count = -(ha + hb + hd + he);  // true is -1
        const v16i none{};
        const v16b ra = __builtin_convertvector(
            (a > zero) & ha ? count : none, v16b);
        const v16b rb = __builtin_convertvector(
            (b > zero) & hb ? count : none, v16b);
        const v16b rd = __builtin_convertvector(
            (d > zero) & hd ? count : none, v16b);
        const v16b re = __builtin_convertvector(
            (e > zero) & he ? count : none, v16b);
        std::memcpy(r00 + c, &ra, 16);
        std::memcpy(r00 + n + c, &rb, 16);
        std::memcpy(r00 + s.w * n + c, &rd, 16);
        std::memcpy(r00 + s.w * n + n + c, &re, 16);
      }
    }
  }
}

// acc (MR x 16 NV, leading dimension ld) += sum over q < rows of
// A[i](q) * dz[q, :], A[i](q) = a[i][q * c]: the weight gradient's rows
// (tap, channel) against the output gradient, summed over pixels in order.
template <int MR, int NV>
inline void WeightMicro(const float* const* a, int64_t c, const float* dz,
                        int64_t ldz, int64_t rows, float* acc_out,
                        int64_t ld) {
  v16 acc[MR][NV];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) acc[i][v] = Load(acc_out + i * ld + 16 * v);
  }
  for (int64_t q = 0; q < rows; ++q) {
    v16 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = Load(dz + q * ldz + 16 * v);
    for (int i = 0; i < MR; ++i) {
      float s = a[i][q * c];
      for (int v = 0; v < NV; ++v) acc[i][v] += s * b[v];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) Store(acc_out + i * ld + 16 * v, acc[i][v]);
  }
}

// d_w (9c x n, rows (tap, channel)) += one image's weight gradient, from
// its padded input xp and dz, its output gradient on the padded-row grid
// (zero in the two thrown-away pixels of each row).
template <int NV>
void WeightGradPanels(const Shape& s, const float* xp, const float* dz,
                      float* d_w) {
  const int64_t c = s.cin, n = s.cout, k = 9 * c;
  for (int64_t j0 = 0; j0 < n; j0 += 16 * NV) {
    int64_t r = 0;
    for (; r + 8 <= k; r += 8) {
      const float* a[8];
      for (int i = 0; i < 8; ++i) {
        a[i] = xp + s.tap(static_cast<int>((r + i) / c)) * c + (r + i) % c;
      }
      WeightMicro<8, NV>(a, c, dz + j0, n, s.rows(), d_w + r * n + j0, n);
    }
    for (; r < k; ++r) {
      const float* a[1] = {xp + s.tap(static_cast<int>(r / c)) * c + r % c};
      WeightMicro<1, NV>(a, c, dz + j0, n, s.rows(), d_w + r * n + j0, n);
    }
  }
}

// Shapes must match exactly: the kernels index raw memory.
bool Same(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> want) {
  return dims.size() == want.size() &&
         std::equal(dims.begin(), dims.end(), want.begin());
}

// The layer's shape from x (B, H, W, cin) and w (3, 3, cin, cout), checked.
ffi::Error GetShape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                    Shape* s) {
  if (x.size() != 4 || w.size() != 4 || w[0] != 3 || w[1] != 3 ||
      w[2] != x[3] || w[3] % 16 != 0 || x[1] % 2 != 0 || x[2] % 2 != 0 ||
      x[1] < 2 || x[2] < 2) {
    return ffi::Error::InvalidArgument(
        "jaxcls conv kernel: shapes do not fit (B, H, W, C_in) images with H "
        "and W even and a (3, 3, C_in, C_out) kernel, C_out a multiple of 16");
  }
  *s = Shape{x[0], x[1], x[2], x[3], w[3]};
  return ffi::Error::Success();
}

// Forward: route may be null (inference).
ffi::Error BlockForward(ffi::ThreadPool& pool, const Array4& x,
                        const Array4& w, const Array1& b,
                        ffi::Span<const int64_t> pooled_dims, float* pooled,
                        ffi::Span<const int64_t> route_dims, uint8_t* route) {
  Shape s;
  if (ffi::Error e = GetShape(x.dimensions(), w.dimensions(), &s);
      e.failure()) {
    return e;
  }
  if (!Same(b.dimensions(), {s.cout}) ||
      !Same(pooled_dims, {s.batch, s.h / 2, s.w / 2, s.cout}) ||
      (route != nullptr && !Same(route_dims, {s.batch, s.h, s.w, s.cout}))) {
    return ffi::Error::InvalidArgument(
        "jaxcls conv kernel: bias, pooled or route do not fit x and w");
  }
  Floats packed(9 * s.cin * s.cout);
  if (!packed.ok()) return OutOfMemory();
  Pack(w.typed_data(), 9 * s.cin, s.cout, s.cout, 1, packed.data);
  const int64_t per_part = s.padded() * s.cin + s.rows() * s.cout;
  Floats scratch(Parts(pool, s.batch, 1) * per_part);
  if (!scratch.ok()) return OutOfMemory();
  const float* x_ = x.typed_data();
  const float* bias = b.typed_data();
  const int64_t image = s.h * s.w, half = image / 4;
  ForEachBlock(pool, s.batch, 1, [&](int64_t p, int64_t b0, int64_t m) {
    float* xp = scratch.data + p * per_part;
    float* z = xp + s.padded() * s.cin;
    for (int64_t i = b0; i < b0 + m; ++i) {
      PadImage(s, x_ + i * image * s.cin, s.cin, xp);
      Conv(s, xp, s.cin, packed.data, s.cout, z);
      BiasReluPool(s, z, bias, pooled + i * half * s.cout,
                   route == nullptr ? nullptr : route + i * image * s.cout);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// x (B, H, W, C_in), w (3, 3, C_in, C_out), b (C_out)
//   -> pooled (B, H/2, W/2, C_out), route (B, H, W, C_out).
static ffi::Error ConvBlockForward(ffi::ThreadPool pool, Array4 x, Array4 w,
                                   Array1 b, Result4 pooled,
                                   ResultBytes4 route) {
  return BlockForward(pool, x, w, b, pooled->dimensions(),
                      pooled->typed_data(), route->dimensions(),
                      route->typed_data());
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_conv_block_forward, ConvBlockForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array4>()
                                  .Arg<Array4>()
                                  .Arg<Array1>()
                                  .Ret<Array4>()
                                  .Ret<Bytes4>());

// The forward pass alone (evaluation): x, w, b -> pooled.
static ffi::Error ConvBlockInfer(ffi::ThreadPool pool, Array4 x, Array4 w,
                                 Array1 b, Result4 pooled) {
  return BlockForward(pool, x, w, b, pooled->dimensions(),
                      pooled->typed_data(), {}, nullptr);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_conv_block_infer, ConvBlockInfer,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array4>()
                                  .Arg<Array4>()
                                  .Arg<Array1>()
                                  .Ret<Array4>());

namespace {

// d_pooled * (1/ties) where route holds the tie count, 0 where it is 0:
// autodiff's order, the factor 1/ties first and then the product. The
// factor comes from a 16-entry table by one permute.
inline v16 Route(v16 g, const uint8_t* ties) {
  static const v16 kInverse = {0.0f, 1.0f, 0.5f, 1.0f / 3.0f, 0.25f};
  v16b t;
  std::memcpy(&t, ties, 16);
  const v16i k = __builtin_convertvector(t, v16i);
  return g * __builtin_shuffle(kInverse, k);
}

// One image's d_z on the padded grid (dzp: zero borders, kept zero) from
// d_pooled (g) and the route bytes, and its sum over pixels added to db.
void RouteImage(const Shape& s, const float* g, const uint8_t* route,
                float* dzp, float* db) {
  const int64_t n = s.cout, pw = s.pw();
  for (int64_t py = 0; py < s.h / 2; ++py) {
    for (int64_t px = 0; px < s.w / 2; ++px) {
      const float* gp = g + (py * (s.w / 2) + px) * n;
      const uint8_t* r00 = route + ((2 * py) * s.w + 2 * px) * n;
      float* d00 = dzp + ((2 * py + 1) * pw + 2 * px + 1) * n;
      for (int64_t c = 0; c < n; c += 16) {
        const v16 gv = Load(gp + c);
        const v16 a = Route(gv, r00 + c), b = Route(gv, r00 + n + c);
        const v16 d = Route(gv, r00 + s.w * n + c);
        const v16 e = Route(gv, r00 + s.w * n + n + c);
        Store(d00 + c, a);
        Store(d00 + n + c, b);
        Store(d00 + pw * n + c, d);
        Store(d00 + pw * n + n + c, e);
        Store(db + c, Load(db + c) + ((a + b) + (d + e)));
      }
    }
  }
}

// The backward pass of a block; d_zp_out may be null (the caller needs no
// input gradient), then d_z lives in per-thread scratch.
ffi::Error BlockBackward(ffi::ThreadPool& pool, const Array4& x,
                         const Bytes4& route, const Array4& d_pooled,
                         float* d_zp_out, ffi::Span<const int64_t> d_zp_dims,
                         Array4& d_w, Array1& d_b) {
  Shape s;
  if (ffi::Error e = GetShape(x.dimensions(), d_w.dimensions(), &s);
      e.failure()) {
    return e;
  }
  if (!Same(route.dimensions(), {s.batch, s.h, s.w, s.cout}) ||
      !Same(d_pooled.dimensions(), {s.batch, s.h / 2, s.w / 2, s.cout}) ||
      (d_zp_out != nullptr &&
       !Same(d_zp_dims, {s.batch, s.padded(), s.cout})) ||
      !Same(d_b.dimensions(), {s.cout})) {
    return ffi::Error::InvalidArgument(
        "jaxcls conv kernel: route, d_pooled, d_zp or d_b do not fit x");
  }
  // The weight and bias gradients are summed over fixed chunks of 8
  // images, then over the chunks in order: the same bits for any number of
  // threads.
  const int64_t chunk = 8, chunks = (s.batch + chunk - 1) / chunk;
  const int64_t k = 9 * s.cin, n = s.cout, partial = k * n + n;
  if (chunks == 0) {  // an empty batch: zero gradients
    std::memset(d_w.typed_data(), 0, sizeof(float) * k * n);
    std::memset(d_b.typed_data(), 0, sizeof(float) * n);
    return ffi::Error::Success();
  }
  Floats partials(chunks * partial);
  const int64_t per_part =
      s.padded() * s.cin + (d_zp_out == nullptr ? s.padded() * n : 0);
  Floats scratch(Parts(pool, chunks, 1) * per_part);
  if (!partials.ok() || !scratch.ok()) return OutOfMemory();
  const float* x_ = x.typed_data();
  const uint8_t* route_ = route.typed_data();
  const float* g_ = d_pooled.typed_data();
  const int64_t image = s.h * s.w, pw = s.pw();
  ForEachBlock(pool, chunks, 1, [&](int64_t p, int64_t c0, int64_t cm) {
    float* xp = scratch.data + p * per_part;
    float* own_dzp = xp + s.padded() * s.cin;  // zero borders, kept zero
    for (int64_t ch = c0; ch < c0 + cm; ++ch) {
      float* dw = partials.data + ch * partial;
      float* db = dw + k * n;
      for (int64_t i = ch * chunk; i < std::min(s.batch, (ch + 1) * chunk);
           ++i) {
        float* dzp = own_dzp;
        if (d_zp_out != nullptr) {
          dzp = d_zp_out + i * s.padded() * n;
          std::memset(dzp, 0, sizeof(float) * s.padded() * n);
        }
        RouteImage(s, g_ + i * (image / 4) * n, route_ + i * image * n, dzp,
                   db);
        PadImage(s, x_ + i * image * s.cin, s.cin, xp);
        // dz on the padded-row grid: output pixel q sits at q + pw + 1.
        const float* dz = dzp + (pw + 1) * n;
        if (n % 32 == 0) {
          WeightGradPanels<2>(s, xp, dz, dw);
        } else {
          WeightGradPanels<1>(s, xp, dz, dw);
        }
      }
    }
  });
  float* d_w_ = d_w.typed_data();
  float* d_b_ = d_b.typed_data();
  std::memcpy(d_w_, partials.data, sizeof(float) * k * n);
  std::memcpy(d_b_, partials.data + k * n, sizeof(float) * n);
  for (int64_t ch = 1; ch < chunks; ++ch) {
    const float* src = partials.data + ch * partial;
    for (int64_t j = 0; j < k * n; ++j) d_w_[j] += src[j];
    for (int64_t j = 0; j < n; ++j) d_b_[j] += src[k * n + j];
  }
  return ffi::Error::Success();
}

}  // namespace

// x (B, H, W, C_in), route (B, H, W, C_out) bytes, d_pooled (B, H/2, W/2,
// C_out) -> d_zp (B, (H+2)(W+2)+8, C_out): the gradient of the
// convolution's output, zero-padded on the padded-row grid, for the input
// gradient; d_w (3, 3, C_in, C_out); d_b (C_out).
static ffi::Error ConvBlockBackward(ffi::ThreadPool pool, Array4 x,
                                    Bytes4 route, Array4 d_pooled,
                                    Result3 d_zp, Result4 d_w, Result1 d_b) {
  return BlockBackward(pool, x, route, d_pooled, d_zp->typed_data(),
                       d_zp->dimensions(), *d_w, *d_b);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_conv_block_backward, ConvBlockBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array4>()
                                  .Arg<Bytes4>()
                                  .Arg<Array4>()
                                  .Ret<Array3>()
                                  .Ret<Array4>()
                                  .Ret<Array1>());

// The same without d_zp, where the input gradient is not wanted (or comes
// from lax): x, route, d_pooled -> d_w, d_b.
static ffi::Error ConvBlockWeightGrad(ffi::ThreadPool pool, Array4 x,
                                     Bytes4 route, Array4 d_pooled,
                                     Result4 d_w, Result1 d_b) {
  return BlockBackward(pool, x, route, d_pooled, nullptr, {}, *d_w, *d_b);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_conv_block_weight_grad,
                              ConvBlockWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array4>()
                                  .Arg<Bytes4>()
                                  .Arg<Array4>()
                                  .Ret<Array4>()
                                  .Ret<Array1>());

// d_zp (B, (H+2)(W+2)+8, C_out) from the backward pass, w (3, 3, C_in,
// C_out) -> d_x (B, H, W, C_in), C_in a multiple of 16: the convolution of
// d_z with the kernel flipped and transposed.
static ffi::Error ConvInputGrad(ffi::ThreadPool pool, Array3 d_zp, Array4 w,
                                Result4 d_x) {
  Shape s;
  if (ffi::Error e = GetShape(d_x->dimensions(), w.dimensions(), &s);
      e.failure()) {
    return e;
  }
  if (s.cin % 16 != 0 || !Same(d_zp.dimensions(), {s.batch, s.padded(), s.cout})) {
    return ffi::Error::InvalidArgument(
        "jaxcls conv kernel: the input gradient needs C_in a multiple of 16 "
        "and d_zp of shape (B, (H+2)(W+2)+8, C_out)");
  }
  // B'[(t, o), i] = w[8 - t, i, o]: tap t of the flipped kernel.
  const int64_t cin = s.cin, cout = s.cout;
  Floats packed(9 * cin * cout);
  Floats scratch(Parts(pool, s.batch, 1) * s.rows() * cin);
  if (!packed.ok() || !scratch.ok()) return OutOfMemory();
  const float* w_ = w.typed_data();
  float* dst = packed.data;
  for (int64_t j0 = 0; j0 < cin; j0 += 16) {
    for (int64_t t = 0; t < 9; ++t) {
      for (int64_t o = 0; o < cout; ++o) {
        for (int64_t j = 0; j < 16; ++j) {
          *dst++ = w_[((8 - t) * cin + j0 + j) * cout + o];
        }
      }
    }
  }
  const float* dzp_ = d_zp.typed_data();
  float* d_x_ = d_x->typed_data();
  const int64_t pw = s.pw();
  ForEachBlock(pool, s.batch, 1, [&](int64_t p, int64_t b0, int64_t m) {
    float* out = scratch.data + p * s.rows() * cin;
    for (int64_t i = b0; i < b0 + m; ++i) {
      Conv(s, dzp_ + i * s.padded() * cout, cout, packed.data, cin, out);
      for (int64_t y = 0; y < s.h; ++y) {
        std::memcpy(d_x_ + (i * s.h + y) * s.w * cin, out + y * pw * cin,
                    sizeof(float) * s.w * cin);
      }
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxcls_conv_input_grad, ConvInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Array3>()
                                  .Arg<Array4>()
                                  .Ret<Array4>());
