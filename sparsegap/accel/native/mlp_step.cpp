// The MLP encoder's whole training step on the CPU, fused: forward, reconstruction loss and
// backward of  mse(atoms·codes, x) + l1·mean(codes),  codes = ReLU(W2·ReLU(W1·x + b1) + b2),
// for R replicas on one shared batch x (M × B, one sample per column).
//
// Why by hand: at the paper's sizes (M = 8, hidden 256, N = 16, B = 1,024) every GEMM of the
// torch step has an 8- or 16-wide side, which BLAS runs at a fifth to a third of peak, and the
// 256 × B hidden activations (5 MB for five replicas) make four trips through memory. Here the
// samples are cut into chunks of 32; each chunk's hidden activations (32 × 256 floats) stay in
// the core's cache from the forward pass to the weight gradients, and every product is a
// register-tiled loop of 8-wide FMAs. The threads split the samples, keep their own gradient
// sums and add them up at the end (in a fixed order, so a step is deterministic for a given
// thread count).
//
// Layout: x (M, B), w1 (R, H, M), b1 (R, H), w2 (R, N, H), b2 (R, N), atoms (R, M, N), codes
// (R, N, B), all float32, contiguous. B must be a multiple of 8 and H a multiple of 8 (the
// Python side checks). Compiled by sparsegap/accel/native/build.py with -mavx2 -mfma -fopenmp.
#include <immintrin.h>
#include <omp.h>

#include <cstring>

namespace {
typedef __m256 v8;
inline v8 ld(const float* p) { return _mm256_loadu_ps(p); }
inline void st(float* p, v8 v) { _mm256_storeu_ps(p, v); }
inline v8 bc(float s) { return _mm256_set1_ps(s); }
inline v8 fma(v8 a, v8 b, v8 c) { return _mm256_fmadd_ps(a, b, c); }
inline v8 zero() { return _mm256_setzero_ps(); }
inline float hsum(v8 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}
// Samples per chunk: 32 × H floats of hidden activations fit the core's L1/L2 (measured: 16, 48
// and 64 are within noise of 32 at the paper's size, larger is slower).
constexpr int SC = 32;

struct Ctx {
  int M, H, N, NP, B;  // NP: N rounded up to a multiple of 8 (the row length of zt and ga)
  const float *x, *w1t, *b1, *w2, *b2, *atoms;  // w1t: [M][H]; w2: [N][H]; atoms: [M][N]
  float l1c, scale;
  float *hs, *z, *zt, *res, *gz;  // chunk buffers: hs [SC][H], z/gz [N][SC], zt [SC][NP], res [M][SC]
  float *gw2, *gw1t, *gb1, *gb2, *ga, *sums;  // thread sums: [N][H], [M][H], [H], 8 × [N], [M][NP], 16
  float* codes;                                  // [N][B]
};

// The micro-kernel of five of the products: acc[i][t] += sum_p A(i, p) · B[p][8t .. 8t + 8),
// A(i, p) = a[i·ai + p·ap] broadcast, B's rows ldb apart; TA × TJ accumulators in registers.
template <int TA, int TJ>
inline void rows_times_panel(v8 (&acc)[TA][TJ], const float* a, long ai, long ap, const float* b,
                             long ldb, int k) {
  for (int p = 0; p < k; ++p) {
    v8 row[TJ];
    for (int t = 0; t < TJ; ++t) row[t] = ld(b + p * ldb + 8 * t);
    for (int i = 0; i < TA; ++i) {
      const v8 x = bc(a[i * ai + p * ap]);
      for (int t = 0; t < TJ; ++t) acc[i][t] = fma(x, row[t], acc[i][t]);
    }
  }
}

template <int TA, int TJ>
inline void set_zero(v8 (&acc)[TA][TJ]) {
  for (int i = 0; i < TA; ++i)
    for (int t = 0; t < TJ; ++t) acc[i][t] = zero();
}

// out[i·ldo + 8t ..] += acc[i][t]: a weight gradient's running sum over the chunks
template <int TA, int TJ>
inline void add_into(float* out, long ldo, const v8 (&acc)[TA][TJ]) {
  for (int i = 0; i < TA; ++i)
    for (int t = 0; t < TJ; ++t) st(out + i * ldo + 8 * t, _mm256_add_ps(ld(out + i * ldo + 8 * t), acc[i][t]));
}

// out[i][j ..] += sum_s A[i][s] · B[s][j ..] over the chunk's ns samples (A's rows ai apart,
// B's ldb): the weight gradients' running sums (W2, W1 and the atoms)
template <int TA, int TJ>
inline void add_product(float* out, long ldo, const float* a, long ai, const float* b, long ldb,
                        int ns) {
  v8 acc[TA][TJ];
  set_zero(acc);
  rows_times_panel(acc, a, ai, 1, b, ldb, ns);
  add_into(out, ldo, acc);
}

// h[s][j] = relu(b1[j] + sum_m x[m][s] w1t[m][j])
template <int TS, int TJ>
inline void l1_tile(const Ctx& c, int s0, int s, int j) {
  v8 acc[TS][TJ];
  for (int t = 0; t < TJ; ++t) {
    v8 b = c.b1 ? ld(c.b1 + j + 8 * t) : zero();
    for (int a = 0; a < TS; ++a) acc[a][t] = b;
  }
  rows_times_panel(acc, c.x + s0 + s, 1, c.B, c.w1t + j, c.H, c.M);
  for (int a = 0; a < TS; ++a)
    for (int t = 0; t < TJ; ++t) st(c.hs + (s + a) * c.H + j + 8 * t, _mm256_max_ps(acc[a][t], zero()));
}

// z[n][s] = relu(b2[n] + sum_j w2[n][j] h[s][j])
template <int TN, int TS>
inline void l2_tile(const Ctx& c, int n, int s) {
  v8 acc[TN][TS];
  for (int b = 0; b < TN; ++b)
    for (int a = 0; a < TS; ++a) acc[b][a] = zero();
  for (int j = 0; j < c.H; j += 8) {
    v8 h[TS];
    for (int a = 0; a < TS; ++a) h[a] = ld(c.hs + (s + a) * c.H + j);
    for (int b = 0; b < TN; ++b) {
      v8 w = ld(c.w2 + (n + b) * c.H + j);
      for (int a = 0; a < TS; ++a) acc[b][a] = fma(w, h[a], acc[b][a]);
    }
  }
  for (int b = 0; b < TN; ++b)
    for (int a = 0; a < TS; ++a) {
      float v = hsum(acc[b][a]) + (c.b2 ? c.b2[n + b] : 0.f);
      v = v > 0.f ? v : 0.f;
      c.z[(n + b) * SC + s + a] = v;
      c.zt[(s + a) * c.NP + n + b] = v;
    }
}

// gh[s][j] = (h[s][j] > 0) * sum_n gz[n][s] w2[n][j], written over h; b1's gradient
template <int TS, int TJ>
inline void dh_tile(const Ctx& c, int s, int j) {
  v8 acc[TS][TJ];
  set_zero(acc);
  rows_times_panel(acc, c.gz + s, 1, SC, c.w2 + j, c.H, c.N);
  v8 gb[TJ];
  for (int t = 0; t < TJ; ++t) gb[t] = zero();
  for (int a = 0; a < TS; ++a)
    for (int t = 0; t < TJ; ++t) {
      float* p = c.hs + (s + a) * c.H + j + 8 * t;
      v8 g = _mm256_and_ps(_mm256_cmp_ps(ld(p), zero(), _CMP_GT_OQ), acc[a][t]);
      st(p, g);
      gb[t] = _mm256_add_ps(gb[t], g);
    }
  if (c.b1)
    for (int t = 0; t < TJ; ++t) st(c.gb1 + j + 8 * t, _mm256_add_ps(ld(c.gb1 + j + 8 * t), gb[t]));
}

// res[m][s] = scale · (sum_n atoms[m][n] z[n][s] − x[m][s]); squares into the lane sums
template <int TM, int TV>
inline void res_tile(const Ctx& c, int s0, int m, int v) {
  v8 acc[TM][TV];
  for (int b = 0; b < TM; ++b)
    for (int t = 0; t < TV; ++t) acc[b][t] = _mm256_sub_ps(zero(), ld(c.x + (size_t)(m + b) * c.B + s0 + 8 * (v + t)));
  for (int n = 0; n < c.N; ++n) {
    v8 z[TV];
    for (int t = 0; t < TV; ++t) z[t] = ld(c.z + n * SC + 8 * (v + t));
    for (int b = 0; b < TM; ++b) {
      v8 a = bc(c.atoms[(m + b) * c.N + n]);
      for (int t = 0; t < TV; ++t) acc[b][t] = fma(a, z[t], acc[b][t]);
    }
  }
  v8 sq = ld(c.sums);
  const v8 sc = bc(c.scale);
  for (int b = 0; b < TM; ++b)
    for (int t = 0; t < TV; ++t) {
      sq = fma(acc[b][t], acc[b][t], sq);
      st(c.res + (m + b) * SC + 8 * (v + t), _mm256_mul_ps(acc[b][t], sc));
    }
  st(c.sums, sq);
}

// gz[n][s] = (z[n][s] > 0) · (sum_m atoms[m][n] res[m][s] + l1c); b2's gradient into lane sums
template <int TN, int TV>
inline void gz_tile(const Ctx& c, int n, int v) {
  v8 acc[TN][TV];
  for (int b = 0; b < TN; ++b)
    for (int t = 0; t < TV; ++t) acc[b][t] = bc(c.l1c);
  for (int m = 0; m < c.M; ++m) {
    v8 r[TV];
    for (int t = 0; t < TV; ++t) r[t] = ld(c.res + m * SC + 8 * (v + t));
    for (int b = 0; b < TN; ++b) {
      v8 a = bc(c.atoms[m * c.N + n + b]);
      for (int t = 0; t < TV; ++t) acc[b][t] = fma(a, r[t], acc[b][t]);
    }
  }
  for (int b = 0; b < TN; ++b) {
    v8 gb = ld(c.gb2 + 8 * (n + b));
    for (int t = 0; t < TV; ++t) {
      const float* z = c.z + (n + b) * SC + 8 * (v + t);
      v8 g = _mm256_and_ps(_mm256_cmp_ps(ld(z), zero(), _CMP_GT_OQ), acc[b][t]);
      st(c.gz + (n + b) * SC + 8 * (v + t), g);
      gb = _mm256_add_ps(gb, g);
    }
    st(c.gb2 + 8 * (n + b), gb);
  }
}

// Calls f.operator()<TA, TJ>(a, j) over an na × nj grid (j in units of 8 floats) in TA × TJ
// tiles, then the edges in narrower tiles. Column by column (all a for one j-tile, then the
// next): the operand indexed by j stays in L1 while the one indexed by a streams past.
template <int TA, int TJ, class F>
inline void tiles(int na, int nj, F&& f) {
  int j = 0;
  for (; j + TJ <= nj; j += TJ) {
    int a = 0;
    for (; a + TA <= na; a += TA) f.template operator()<TA, TJ>(a, j);
    for (; a < na; ++a) f.template operator()<1, TJ>(a, j);
  }
  for (; j < nj; ++j) {
    int a = 0;
    for (; a + TA <= na; a += TA) f.template operator()<TA, 1>(a, j);
    for (; a < na; ++a) f.template operator()<1, 1>(a, j);
  }
}

// Every product runs in 4 × 3 register tiles (4 rows × 24 floats: 12 accumulators of the 16
// AVX2 registers); 4 × 2, 6 × 2 and 3 × 4 measured 5–20 % slower.
#define TILE 4, 3
void chunk(const Ctx& c, int s0, int ns) {
  const int H = c.H, N = c.N, M = c.M;
  // layer 1
  const int HV = H / 8;
  tiles<TILE>(ns, HV, [&]<int A, int J>(int s, int j) { l1_tile<A, J>(c, s0, s, 8 * j); });
  // layer 2 (here 'j' runs over samples, one at a time)
  tiles<TILE>(N, ns, [&]<int A, int J>(int n, int s) { l2_tile<A, J>(c, n, s); });
  // codes out, the L1 term, the residual (scaled) and the MSE, the codes' gradient, b2's and the
  // atoms' gradients. ns is a multiple of 8; lane sums are reduced once, after the last chunk.
  const int nv = ns / 8;
  for (int nn = 0; nn < N; ++nn) {
    std::memcpy(c.codes + (size_t)nn * c.B + s0, c.z + nn * SC, sizeof(float) * ns);
    v8 l = ld(c.sums + 8);
    for (int v = 0; v < nv; ++v) l = _mm256_add_ps(l, ld(c.z + nn * SC + 8 * v));
    st(c.sums + 8, l);
  }
  tiles<4, 2>(M, nv, [&]<int A, int J>(int m, int v) { res_tile<A, J>(c, s0, m, v); });
  tiles<4, 2>(N, nv, [&]<int A, int J>(int n, int v) { gz_tile<A, J>(c, n, v); });
  if (c.ga)  // ga[m][n] += sum_s res[m][s] zt[s][n]
    tiles<TILE>(M, c.NP / 8, [&]<int A, int J>(int m, int n) {
      add_product<A, J>(c.ga + m * c.NP + 8 * n, c.NP, c.res + m * SC, SC, c.zt + 8 * n, c.NP, ns);
    });
  // gw2[n][j] += sum_s gz[n][s] h[s][j]
  tiles<TILE>(N, HV, [&]<int A, int J>(int n, int j) {
    add_product<A, J>(c.gw2 + n * H + 8 * j, H, c.gz + n * SC, SC, c.hs + 8 * j, H, ns);
  });
  // gh = dH (over h)
  tiles<TILE>(ns, HV, [&]<int A, int J>(int s, int j) { dh_tile<A, J>(c, s, 8 * j); });
  // gw1t[m][j] += sum_s x[m][s] gh[s][j]
  tiles<TILE>(M, HV, [&]<int A, int J>(int m, int j) {
    add_product<A, J>(c.gw1t + m * H + 8 * j, H, c.x + (size_t)m * c.B + s0, c.B, c.hs + 8 * j, H, ns);
  });
}
}  // namespace

// Sizes of the scratch buffer mlp_step needs, in floats.
extern "C" long mlp_step_scratch(int R, int M, int H, int N, int T) {
  const long NP = (N + 7) / 8 * 8;
  long chunk = (long)SC * H + 2L * N * SC + (long)SC * NP + (long)M * SC;
  long acc = (long)N * H + (long)M * H + H + 8L * N + (long)M * NP + 16;
  return (long)T * (chunk + (long)R * acc) + (long)R * M * H + 64;
}

extern "C" void mlp_step(int R, int M, int H, int N, int B, int T, const float* x, const float* w1,
                         const float* b1, const float* w2, const float* b2, const float* atoms,
                         float l1_coeff, float* codes, float* gw1, float* gb1, float* gw2,
                         float* gb2, float* gatoms, float* mse, float* l1, float* scratch) {
  const int NP = (N + 7) / 8 * 8;
  const long chunk_sz = (long)SC * H + 2L * N * SC + (long)SC * NP + (long)M * SC;
  const long acc_sz = (long)N * H + (long)M * H + H + 8L * N + (long)M * NP + 16;
  float* w1t_all = scratch;                           // [R][M][H]
  float* thread_base = scratch + (long)R * M * H;
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const long per = ((B / 8 + nt - 1) / nt) * 8;
    const int s_begin = (int)(t * per < B ? t * per : B), s_end = (int)((t + 1) * per < B ? (t + 1) * per : B);
    float* base = thread_base + (long)t * (chunk_sz + R * acc_sz);
    std::memset(base + SC * H + 2 * N * SC, 0, sizeof(float) * SC * NP);  // zt's padding
    std::memset(base + chunk_sz, 0, sizeof(float) * R * acc_sz);
#pragma omp for
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < H; ++j)
        for (int m = 0; m < M; ++m) w1t_all[((long)r * M + m) * H + j] = w1[((long)r * H + j) * M + m];
    for (int r = 0; r < R; ++r) {
      float* acc = base + chunk_sz + (long)r * acc_sz;
      Ctx c;
      c.M = M; c.H = H; c.N = N; c.NP = NP; c.B = B;
      c.x = x; c.w1t = w1t_all + (long)r * M * H; c.b1 = b1 ? b1 + (long)r * H : nullptr;
      c.w2 = w2 + (long)r * N * H; c.b2 = b2 ? b2 + (long)r * N : nullptr; c.atoms = atoms + (long)r * M * N;
      c.l1c = l1_coeff / ((float)N * B); c.scale = 2.0f / ((float)M * B);
      c.hs = base; c.z = base + SC * H; c.gz = c.z + N * SC; c.zt = c.gz + N * SC;
      c.res = c.zt + SC * NP;
      c.gw2 = acc; c.gw1t = acc + (long)N * H; c.gb1 = c.gw1t + (long)M * H; c.gb2 = c.gb1 + H;
      c.ga = gatoms ? c.gb2 + 8 * N : nullptr; c.sums = c.gb2 + 8 * N + (long)M * NP;
      c.codes = codes + (long)r * N * B;
      for (int s0 = s_begin; s0 < s_end; s0 += SC) chunk(c, s0, s_end - s0 < SC ? s_end - s0 : SC);
    }
    // sum the threads' accumulators into thread 0's
#pragma omp barrier
    const long total = R * acc_sz, lo = total * t / nt, hi = total * (t + 1) / nt;
    float* dst = thread_base + chunk_sz;
    for (int u = 1; u < nt; ++u) {
      const float* src = thread_base + (long)u * (chunk_sz + R * acc_sz) + chunk_sz;
      for (long i = lo; i < hi; ++i) dst[i] += src[i];
    }
  }
  for (int r = 0; r < R; ++r) {
    const float* acc = thread_base + chunk_sz + (long)r * acc_sz;
    std::memcpy(gw2 + (long)r * N * H, acc, sizeof(float) * N * H);
    const float* g1t = acc + (long)N * H;
    for (int j = 0; j < H; ++j)
      for (int m = 0; m < M; ++m) gw1[((long)r * H + j) * M + m] = g1t[(long)m * H + j];
    if (gb1) std::memcpy(gb1 + (long)r * H, g1t + (long)M * H, sizeof(float) * H);
    const float* p = g1t + (long)M * H + H;
    if (gb2)
      for (int n = 0; n < N; ++n) gb2[(long)r * N + n] = hsum(ld(p + 8 * n));
    p += 8 * N;
    if (gatoms)
      for (int m = 0; m < M; ++m)
        std::memcpy(gatoms + ((long)r * M + m) * N, p + (long)m * NP, sizeof(float) * N);
    p += (long)M * NP;
    if (mse) mse[r] = hsum(ld(p)) / ((float)M * B);
    if (l1) l1[r] = hsum(ld(p + 8)) / ((float)N * B);
  }
}
