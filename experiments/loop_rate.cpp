// How fast this CPU runs the sparse kernels' inner loop, and what limits it (docs/kernels.md, "What holds
// the kernels at batch 64"). Plain C++, no torch:
//
//     g++ -O3 -march=native -o /tmp/loop_rate experiments/loop_rate.cpp && /tmp/loop_rate
//
// 1. peak: multiply-adds on registers only (10 independent chains), the FMA units' rate;
// 2. loads: 256-bit aligned loads and nothing else, by footprint, the load ports' rate;
// 3. per-weight: the loop of sparse_conv.cpp's tile<1, 6> at batch 64 (one broadcast weight, 12 multiply-adds each
//    loading its input vector), over 4096 nonzeros at random 64-byte positions of a footprint from 4 KiB (L1) to
//    1 MiB (beyond L2); also with each nonzero's offset and value in one 8-byte entry (one load fewer);
// 4. reuse: the dense kernels' loop (R = 6 output channels share each loaded input: 2 input loads and 6 broadcasts
//    for 12 multiply-adds);
// 5. alignment: the per-weight loop in a 16 KiB footprint with its inputs 64-byte aligned (batch 64: a position is
//    16 images, 64 bytes), shifted by one float, by -1, 0 or +1 float at random (one picture's taps kx on aligned
//    rows), or at any float offset (one picture's rows of W + 1 floats): a 32-byte load that crosses a 64-byte line
//    costs two.
// GMAC/s counts 8 multiply-adds per vector multiply-add, the fastest of 40 rounds.
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

typedef float vh __attribute__((vector_size(32), aligned(4)));

static double seconds(void (*body)(void*), void* ctx, int rounds = 40) {
    double best = 1e30;
    for (int r = 0; r < rounds; r++) {
        const auto t = std::chrono::steady_clock::now();
        body(ctx);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
    }
    return best;
}

__attribute__((noinline)) static void peak(float* out, int64_t n) {
    __m256 a[10];
    for (int j = 0; j < 10; j++) a[j] = _mm256_set1_ps(0.01f * j);
    const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
    for (int64_t i = 0; i < n; i++)
#pragma GCC unroll 10
        for (int j = 0; j < 10; j++) a[j] = _mm256_fmadd_ps(a[j], b, c);
    __m256 s = a[0];
    for (int j = 1; j < 10; j++) s = _mm256_add_ps(s, a[j]);
    _mm256_storeu_ps(out, s);
}

__attribute__((noinline)) static void loads(const float* p, float* out, int64_t n, int64_t mask) {
    __m256i a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_si256();
    for (int64_t i = 0; i < n; i++) {
        const float* q = p + ((i * 128) & mask);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) a[j & 7] = _mm256_xor_si256(a[j & 7], _mm256_load_si256((const __m256i*)(q + 8 * j)));
    }
    __m256i s = a[0];
    for (int j = 1; j < 8; j++) s = _mm256_xor_si256(s, a[j]);
    _mm256_storeu_si256((__m256i*)out, s);
}

// sparse_conv.cpp's per-weight tile at V = 6 (12 ymm accumulators)
__attribute__((noinline)) static void per_weight(const float* in, const int32_t* src, const float* val, int64_t K,
                                                 float* out) {
    vh a[12];
    for (int i = 0; i < 12; i++) a[i] = vh{0};
    for (int64_t k = 0; k < K; k++) {
        const float* p = in + src[k];
        const float wv = val[k];
        const vh w = {wv, wv, wv, wv, wv, wv, wv, wv};
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] += w * *(const vh*)(p + 8 * i);
    }
    vh s = a[0];
    for (int i = 1; i < 12; i++) s += a[i];
    *(vh*)out += s;
}

// the same with offset and value in one 8-byte entry
__attribute__((noinline)) static void per_weight_packed(const float* in, const uint64_t* ent, int64_t K, float* out) {
    vh a[12];
    for (int i = 0; i < 12; i++) a[i] = vh{0};
    for (int64_t k = 0; k < K; k++) {
        const uint64_t e = ent[k];
        const float* p = in + (int32_t)(uint32_t)e;
        const uint32_t bits = uint32_t(e >> 32);
        float wv;
        std::memcpy(&wv, &bits, 4);
        const vh w = {wv, wv, wv, wv, wv, wv, wv, wv};
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] += w * *(const vh*)(p + 8 * i);
    }
    vh s = a[0];
    for (int i = 1; i < 12; i++) s += a[i];
    *(vh*)out += s;
}

// the dense kernels' R = 6, V = 1 tile: one position of 16 images (2 ymm) loaded once for 6 output channels
__attribute__((noinline)) static void reuse6(const float* in, const int32_t* src, const float* val, int64_t K,
                                             float* out) {
    vh a[6][2];
    for (int r = 0; r < 6; r++) a[r][0] = a[r][1] = vh{0};
    for (int64_t k = 0; k < K; k++) {
        const float* p = in + src[k];
        const vh x0 = *(const vh*)p, x1 = *(const vh*)(p + 8);
#pragma GCC unroll 6
        for (int r = 0; r < 6; r++) {
            const float wv = val[6 * k + r];
            const vh w = {wv, wv, wv, wv, wv, wv, wv, wv};
            a[r][0] += w * x0;
            a[r][1] += w * x1;
        }
    }
    vh s = a[0][0];
    for (int r = 0; r < 6; r++) s += a[r][0] + a[r][1];
    *(vh*)out += s;
}

struct Span {  // a buffer and the mask of the float offsets loads() reads in it
    float* buf;
    int64_t mask;
    float* sink;
};

struct Peak {
    int64_t rounds;
    float* sink;
};

struct Sparse {
    std::vector<float> in, val;
    std::vector<int32_t> src;
    std::vector<uint64_t> ent;
    static constexpr int64_t K = 4096;
    float out[8] = {0};
    // shift: 0 aligned, 1 one float, 2 a random float in {0, 1, 2}, 3 any float offset
    explicit Sparse(int64_t footprint, int shift = 0)
        : in(footprint / 4 + 256, 1.0f), val(6 * K, 0.5f), src(K), ent(K) {
        const int64_t positions = std::max<int64_t>(1, footprint / 64 - 7);  // a tile reads 6 positions of 64 B
        const int64_t lead = (64 - int64_t(reinterpret_cast<uintptr_t>(in.data()) % 64)) % 64 / 4;  // to a 64-B line
        for (int64_t k = 0; k < K; k++) {
            const int64_t off = shift == 0 ? 0 : shift == 1 ? 1 : shift == 2 ? std::rand() % 3 : std::rand() % 16;
            src[k] = int32_t(lead + (std::rand() % positions) * 16 + off);
            uint32_t bits;
            std::memcpy(&bits, &val[k], 4);
            ent[k] = uint64_t(uint32_t(src[k])) | uint64_t(bits) << 32;
        }
    }
};

int main() {
    std::srand(0);
    float sink[8] = {0};
    {
        const int64_t n = 20000000;
        Peak c{n, sink};
        const double t = seconds([](void* p) { auto& c = *(Peak*)p; peak(c.sink, c.rounds); }, &c, 5);
        std::printf("peak, registers only:      %5.1f GMAC/s (%.2f G vector multiply-adds/s)\n", n * 10 * 8 / t / 1e9,
                    n * 10 / t / 1e9);
    }
    float* buf = (float*)std::aligned_alloc(64, 1 << 22);
    for (int i = 0; i < (1 << 20); i++) buf[i] = float(i);
    for (int64_t foot : {8192, 16384, 32768, 65536, 262144, 1048576}) {
        Span c{buf, foot / 4 - 1, sink};
        const int64_t n = 5000000;
        const double t = seconds([](void* p) { auto& c = *(Span*)p; loads(c.buf, c.sink, n, c.mask); }, &c, 5);
        std::printf("loads only, %7lld B:      %5.2f G 32-byte loads/s\n", (long long)foot, n * 16 / t / 1e9);
    }
    for (int64_t foot : {4096, 16384, 32768, 49152, 98304, 262144, 1048576}) {
        Sparse s(foot);
        auto pw = [](void* p) { auto& s = *(Sparse*)p; for (int i = 0; i < 20; i++) per_weight(s.in.data(), s.src.data(), s.val.data(), s.K, s.out); };
        auto pk = [](void* p) { auto& s = *(Sparse*)p; for (int i = 0; i < 20; i++) per_weight_packed(s.in.data(), s.ent.data(), s.K, s.out); };
        auto ru = [](void* p) { auto& s = *(Sparse*)p; for (int i = 0; i < 20; i++) reuse6(s.in.data(), s.src.data(), s.val.data(), s.K, s.out); };
        const double macs = 20.0 * s.K * 12 * 8;
        std::printf("footprint %7lld B: per-weight %5.1f GMAC/s, one 8-byte entry %5.1f, 6 channels per load %5.1f\n",
                    (long long)foot, macs / seconds(pw, &s) / 1e9, macs / seconds(pk, &s) / 1e9,
                    macs / seconds(ru, &s) / 1e9);
    }
    const char* shifts[] = {"64-byte aligned", "one float off", "0, 1 or 2 floats off", "any float offset"};
    for (int shift = 0; shift < 4; shift++) {
        Sparse s(16384, shift);
        auto pw = [](void* p) { auto& s = *(Sparse*)p; for (int i = 0; i < 20; i++) per_weight(s.in.data(), s.src.data(), s.val.data(), s.K, s.out); };
        std::printf("per-weight, 16 KiB, inputs %-21s %5.1f GMAC/s\n", shifts[shift], 20.0 * s.K * 12 * 8 / seconds(pw, &s) / 1e9);
    }
    std::printf("(sink %g)\n", sink[0]);
}
