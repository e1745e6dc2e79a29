// A depthwise 3x3 convolution (padding 1, stride 1 or 2) of a gathered set of channels, and its
// backward, on channels_last float32 CPU tensors:
//
//     out = conv2d(x[:, index], weight, stride=stride, padding=1, groups=len(index))
//
// without materialising x[:, index] or its gradient. The forward serves the fused inference path
// (backends/pytorch/fused.py) and the training path (backends/pytorch/buffered.py); the backward
// adds the input's gradient straight into the columns `index` of the state buffer's gradient and
// returns the weight's. Each thread gathers the rows it needs into a ring of three zero-padded
// rows (a row is gathered once per thread, then read by up to three output rows), and computes
// in blocks of 16 channels whose 9 weights stay in registers. Built on first use by native.py
// (torch.utils.cpp_extension, -O3 -march=native).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kBlock = 16;  // channels per compute block (one AVX-512 register of float32)

using One = std::integer_sequence<int, 0>;
using Four = std::make_integer_sequence<int, 4>;
using Eight = std::make_integer_sequence<int, 8>;

// Channels index[0..K) of the pixels Q... at `src` (C floats apart) into `dst` (Kp floats apart),
// zero from K to Kp: one index load per len(Q) pixels. The fold expression writes the pixels'
// copies out one by one; over the paper network's 108 reads this was 8% faster than a loop over
// the pixels unrolled by gcc 12; sixteen pixels per load took 1.24x the time of eight (measured).
template <int... Q>
inline void gather_pixels(const float* src, float* dst, int64_t C, const int32_t* index, int64_t K, int64_t Kp,
                          std::integer_sequence<int, Q...>) {
  for (int64_t k = 0; k < K; ++k) {
    const int32_t j = index[k];
    ((dst[Q * Kp + k] = src[Q * C + j]), ...);
  }
  ((std::fill(dst + Q * Kp + K, dst + (Q + 1) * Kp, 0.f)), ...);
}

// The reverse: `src` (Kp floats apart) added into channels index[0..K) of the pixels Q... at
// `dst` (C floats apart). A channel repeated in index gets the sum of its copies.
template <int... Q>
inline void scatter_add_pixels(const float* src, float* dst, int64_t C, const int32_t* index, int64_t K, int64_t Kp,
                               std::integer_sequence<int, Q...>) {
  for (int64_t k = 0; k < K; ++k) {
    const int32_t j = index[k];
    ((dst[Q * C + j] += src[Q * Kp + k]), ...);
  }
}

// Asks for every cache line of `n` floats at `p` at once (for reading, or for writing with
// Write = 1), before a gather or scatter visits them in index order: over the paper network's
// reads, the forward took 0.87x the time, the backward's input-gradient pass 0.87x (measured).
template <int Write>
inline void prefetch_row(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, Write);
}

// One image row of x (W pixels of C channels at `src`), channels index[0..K), into `row`: W + 2
// pixels of Kp floats, a zero pixel on each side, zero channels from K to Kp.
inline void gather_row(const float* src, float* row, int64_t W, int64_t C, const int32_t* ip, int64_t K,
                       int64_t Kp) {
  std::fill(row, row + Kp, 0.f);
  std::fill(row + (W + 1) * Kp, row + (W + 2) * Kp, 0.f);
  prefetch_row<0>(src, W * C);
  int64_t xi = 0;
  for (; xi + 8 <= W; xi += 8) gather_pixels(src + xi * C, row + (xi + 1) * Kp, C, ip, K, Kp, Eight{});
  for (; xi + 4 <= W; xi += 4) gather_pixels(src + xi * C, row + (xi + 1) * Kp, C, ip, K, Kp, Four{});
  for (; xi < W; ++xi) gather_pixels(src + xi * C, row + (xi + 1) * Kp, C, ip, K, Kp, One{});
}

// Three padded rows of one thread, each filled once while consecutive output rows read it.
class Ring {
 public:
  Ring(int64_t pixels, int64_t Kp) : size_(pixels * Kp), data_(3 * size_), zero_(size_, 0.f) {}
  // Row `key` (>= 0) in slot `slot`, filled by fill(row) unless the slot holds it already.
  template <typename Fill>
  const float* row(int64_t key, int64_t slot, Fill&& fill) {
    float* r = data_.data() + slot * size_;
    if (held_[slot] != key) {
      held_[slot] = key;
      fill(r);
    }
    return r;
  }
  const float* zero() const { return zero_.data(); }

 private:
  int64_t size_;
  std::vector<float> data_, zero_;
  int64_t held_[3] = {-1, -1, -1};
};

// Wo output pixels of one row: out[xo][k] = sum over taps (ty, tx) of w[ty * 3 + tx][k] *
// rows[ty][xo * stride + tx][k], for k < K (pixel `pitch` floats apart); rows are padded rows of
// Kp floats per pixel, w is (9, Kp).
inline void depthwise_row(const float* const rows[3], const float* w, int64_t Kp, int64_t K, int64_t Wo,
                          int64_t stride, float* out, int64_t pitch) {
  for (int64_t kb = 0; kb < Kp; kb += kBlock) {
    float wb[9][kBlock];
    for (int t = 0; t < 9; ++t)
      for (int j = 0; j < kBlock; ++j) wb[t][j] = w[t * Kp + kb + j];
    for (int64_t xo = 0; xo < Wo; ++xo) {
      const int64_t at = xo * stride * Kp + kb;
      const float* a0 = rows[0] + at;
      const float* a1 = rows[1] + at;
      const float* a2 = rows[2] + at;
      float acc[kBlock];
      for (int j = 0; j < kBlock; ++j)
        acc[j] = a0[j] * wb[0][j] + a0[Kp + j] * wb[1][j] + a0[2 * Kp + j] * wb[2][j] + a1[j] * wb[3][j] +
                 a1[Kp + j] * wb[4][j] + a1[2 * Kp + j] * wb[5][j] + a2[j] * wb[6][j] + a2[Kp + j] * wb[7][j] +
                 a2[2 * Kp + j] * wb[8][j];
      float* d = out + xo * pitch + kb;
      // a full block by a loop of fixed length: gcc turned a loop of min(16, K - kb) floats into a
      // memcpy call per output vector (22% of the forward's time, perf on an AVX2 host)
      if (kb + kBlock <= K) {
        for (int j = 0; j < kBlock; ++j) d[j] = acc[j];
      } else {
        for (int64_t j = 0; j < K - kb; ++j) d[j] = acc[j];
      }
    }
  }
}

struct Shape {
  int64_t N, C, H, W, K, Kp, Ho, Wo;
};

// The three input rows that output row `yo` of image `n` reads, gathered and zero-padded, from
// the thread's ring (the zero row above and below the image).
inline void input_rows(Ring& ring, const Shape& s, int64_t n, int64_t yo, int64_t stride, const float* xp,
                       const int32_t* ip, const float* rows[3]) {
  for (int ty = 0; ty < 3; ++ty) {
    const int64_t yi = yo * stride - 1 + ty;
    rows[ty] = (yi < 0 || yi >= s.H) ? ring.zero() : ring.row(n * s.H + yi, yi % 3, [&](float* row) {
      gather_row(xp + (n * s.H + yi) * s.W * s.C, row, s.W, s.C, ip, s.K, s.Kp);
    });
  }
}

Shape check(const char* what, const torch::Tensor& x, const torch::Tensor& index, const torch::Tensor& weight_t,
            int64_t stride) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat && x.device().is_cpu(), what,
              ": x must be a float32 CPU tensor (N, C, H, W)");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), what, ": x must be channels_last");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == torch::kInt && index.is_contiguous(), what,
              ": index must be a contiguous int32 vector");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = index.size(0);
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.size(0) == 9 && weight_t.size(1) == K &&
                  weight_t.scalar_type() == torch::kFloat && weight_t.is_contiguous(),
              what, ": weight_t must be a contiguous float32 (9, len(index))");
  TORCH_CHECK(stride == 1 || stride == 2, what, ": stride must be 1 or 2");
  const int32_t* ip = index.data_ptr<int32_t>();
  for (int64_t k = 0; k < K; ++k)
    TORCH_CHECK(ip[k] >= 0 && ip[k] < C, what, ": index out of range: ", ip[k], " of ", C, " channels");
  const int64_t Kp = (K + kBlock - 1) / kBlock * kBlock;
  return {N, C, H, W, K, Kp, (H - 1) / stride + 1, (W - 1) / stride + 1};
}

// weight_t (9, K) as (9, Kp), zero beyond K; with `flip`, the taps in reverse order (the kernel
// rotated by 180 degrees: the backward's correlation).
std::vector<float> padded_weights(const torch::Tensor& weight_t, int64_t K, int64_t Kp, bool flip) {
  std::vector<float> w(9 * Kp, 0.f);
  for (int t = 0; t < 9; ++t)
    std::memcpy(w.data() + (flip ? 8 - t : t) * Kp, weight_t.data_ptr<float>() + t * K, K * sizeof(float));
  return w;
}

}  // namespace

torch::Tensor gather_depthwise3x3(const torch::Tensor& x, const torch::Tensor& index, const torch::Tensor& weight_t,
                                  int64_t stride) {
  const Shape s = check("gather_depthwise3x3", x, index, weight_t, stride);
  auto out = torch::empty({s.N, s.K, s.Ho, s.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (s.N == 0 || s.K == 0 || s.H == 0 || s.W == 0) return out;
  const std::vector<float> w = padded_weights(weight_t, s.K, s.Kp, false);
  const int32_t* ip = index.data_ptr<int32_t>();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();

  at::parallel_for(0, s.N * s.Ho, 1, [&](int64_t begin, int64_t end) {
    Ring ring(s.W + 2, s.Kp);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / s.Ho, yo = r % s.Ho;
      const float* rows[3];
      input_rows(ring, s, n, yo, stride, xp, ip, rows);
      depthwise_row(rows, w.data(), s.Kp, s.K, s.Wo, stride, op + r * s.Wo * s.K, s.K);
    }
  });
  return out;
}

// The backward of gather_depthwise3x3 at gradient `dy` (N, K, Ho, Wo), channels_last: the gradient
// of x[:, index] added into `grad_x` (x's shape and layout; a channel repeated in index gets the
// sum), and the weight's gradient returned as (9, K).
torch::Tensor gather_depthwise3x3_backward(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& index,
                                           const torch::Tensor& weight_t, int64_t stride, torch::Tensor grad_x) {
  const char* what = "gather_depthwise3x3_backward";
  const Shape s = check(what, x, index, weight_t, stride);
  TORCH_CHECK(grad_x.sizes() == x.sizes() && grad_x.scalar_type() == torch::kFloat && grad_x.device().is_cpu() &&
                  grad_x.is_contiguous(at::MemoryFormat::ChannelsLast),
              what, ": grad_x must be a float32 channels_last tensor of x's shape");
  TORCH_CHECK(dy.dim() == 4 && dy.size(0) == s.N && dy.size(1) == s.K && dy.size(2) == s.Ho && dy.size(3) == s.Wo &&
                  dy.scalar_type() == torch::kFloat && dy.device().is_cpu(),
              what, ": dy must be float32 (N, len(index), Ho, Wo)");
  const torch::Tensor g = dy.contiguous(at::MemoryFormat::ChannelsLast);
  if (s.N == 0 || s.K == 0 || s.H == 0 || s.W == 0) return torch::zeros({9, s.K}, x.options());
  const int32_t* ip = index.data_ptr<int32_t>();
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();

  // dy's row (n, yo) at its pixels' input positions: W + 2 pixels of Kp floats, pixel u + 1 the
  // output pixel u / stride where stride divides u, zero elsewhere (stride 2 leaves gaps).
  auto spread_row = [&](int64_t n, int64_t yo, float* row) {
    const float* src = gp + (n * s.Ho + yo) * s.Wo * s.K;
    std::fill(row, row + s.Kp, 0.f);
    for (int64_t u = 0; u <= s.W; ++u) {
      float* p = row + (u + 1) * s.Kp;
      if (u % stride || u / stride >= s.Wo) {
        std::fill(p, p + s.Kp, 0.f);
      } else {
        std::memcpy(p, src + u / stride * s.K, s.K * 4);
        std::fill(p + s.K, p + s.Kp, 0.f);
      }
    }
  };

  // The input's gradient, row by row: a stride-1 correlation of the spread dy rows with the
  // kernel rotated by 180 degrees, then added into the gathered columns of grad_x.
  const std::vector<float> flipped = padded_weights(weight_t, s.K, s.Kp, true);
  at::parallel_for(0, s.N * s.H, 1, [&](int64_t begin, int64_t end) {
    Ring ring(s.W + 2, s.Kp);
    std::vector<float> dx(s.W * s.Kp);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / s.H, yi = r % s.H;
      const float* rows[3];
      for (int a = 0; a < 3; ++a) {
        const int64_t v = yi - 1 + a;  // the input position of dy's row v / stride
        const bool on = v >= 0 && v % stride == 0 && v / stride < s.Ho;
        rows[a] = !on ? ring.zero() : ring.row(n * s.Ho + v / stride, (v / stride) % 3, [&](float* row) {
          spread_row(n, v / stride, row);
        });
      }
      depthwise_row(rows, flipped.data(), s.Kp, s.Kp, s.W, 1, dx.data(), s.Kp);
      float* dst = gx + r * s.W * s.C;
      prefetch_row<1>(dst, s.W * s.C);
      int64_t xi = 0;
      for (; xi + 8 <= s.W; xi += 8)
        scatter_add_pixels(dx.data() + xi * s.Kp, dst + xi * s.C, s.C, ip, s.K, s.Kp, Eight{});
      for (; xi < s.W; ++xi) scatter_add_pixels(dx.data() + xi * s.Kp, dst + xi * s.C, s.C, ip, s.K, s.Kp, One{});
    }
  });

  // The weight's gradient: per chunk of output rows, the sum over its rows of dy times the
  // gathered input at each tap; the chunks' sums added at the end in row order, so the result
  // does not depend on which thread finished first.
  std::mutex lock;
  std::vector<std::pair<int64_t, std::vector<float>>> sums;  // (first row, sum) per chunk
  at::parallel_for(0, s.N * s.Ho, 1, [&](int64_t begin, int64_t end) {
    Ring ring(s.W + 2, s.Kp);
    std::vector<float> mine(9 * s.Kp, 0.f), gy(s.Wo * s.Kp, 0.f);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / s.Ho, yo = r % s.Ho;
      const float* rows[3];
      input_rows(ring, s, n, yo, stride, xp, ip, rows);
      for (int64_t xo = 0; xo < s.Wo; ++xo) std::memcpy(gy.data() + xo * s.Kp, gp + (r * s.Wo + xo) * s.K, s.K * 4);
      for (int64_t kb = 0; kb < s.Kp; kb += kBlock) {
        float acc[9][kBlock] = {};
        for (int64_t xo = 0; xo < s.Wo; ++xo) {
          const float* d = gy.data() + xo * s.Kp + kb;
          for (int ty = 0; ty < 3; ++ty) {
            const float* a = rows[ty] + xo * stride * s.Kp + kb;
            for (int tx = 0; tx < 3; ++tx)
              for (int j = 0; j < kBlock; ++j) acc[ty * 3 + tx][j] += d[j] * a[tx * s.Kp + j];
          }
        }
        for (int t = 0; t < 9; ++t)
          for (int j = 0; j < kBlock; ++j) mine[t * s.Kp + kb + j] += acc[t][j];
      }
    }
    std::lock_guard<std::mutex> hold(lock);
    sums.emplace_back(begin, std::move(mine));
  });
  std::sort(sums.begin(), sums.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<float> dw(9 * s.Kp, 0.f);
  for (const auto& [first, sum] : sums)
    for (int64_t i = 0; i < 9 * s.Kp; ++i) dw[i] += sum[i];
  auto out = torch::empty({9, s.K}, x.options());
  for (int t = 0; t < 9; ++t) std::memcpy(out.data_ptr<float>() + t * s.K, dw.data() + t * s.Kp, s.K * 4);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_depthwise3x3", &gather_depthwise3x3, "depthwise 3x3 conv of x[:, index] (channels_last, float32)");
  m.def("gather_depthwise3x3_backward", &gather_depthwise3x3_backward,
        "backward of gather_depthwise3x3: adds x's gradient into grad_x, returns the weight's as (9, K)");
}
