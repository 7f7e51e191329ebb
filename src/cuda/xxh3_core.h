// XXH3-64 with seed 0 and the default secret, written from the XXH3 specification
// (github.com/Cyan4973/xxHash, doc/xxhash_spec.md), for every input length. It computes the same
// value as libxxhash's XXH3_64bits (tree_checksum_test.cc checks that), and is compiled both into
// host C++ and into the tree checksum kernel (tree_checksum_kernel.cu): every function is FERRY_HD,
// `__host__ __device__` under nvcc and nothing otherwise.
//
// Besides the one-shot Hash64, the header exposes the pieces of the long-input path (> 240 bytes)
// that a parallel kernel needs. That path keeps 8 accumulator lanes; in each 64-byte stripe,
// lane i reads data words i and i^1 and updates only its own accumulator, and the per-block
// scramble acts on each lane alone, so the 8 lanes are independent until MergeLanes. LongLane runs
// one lane over a whole input; the kernel gives each lane of a leaf to its own thread.
//
// Thread-safety: pure functions, no state.
#ifndef FERRY_CUDA_XXH3_CORE_H_
#define FERRY_CUDA_XXH3_CORE_H_

#include <cstdint>

#ifdef __CUDACC__
#define FERRY_HD __host__ __device__
#else
#define FERRY_HD
#endif

#ifndef __CUDA_ARCH__
#include <cstring>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "xxh3_core.h reads input words in host byte order and requires a little-endian host"
#endif

namespace ferry::internal::cuda::xxh3 {

inline constexpr uint64_t kPrime32_1 = 0x9E3779B1ULL;
inline constexpr uint64_t kPrime32_2 = 0x85EBCA77ULL;
inline constexpr uint64_t kPrime32_3 = 0xC2B2AE3DULL;
inline constexpr uint64_t kPrime64_1 = 0x9E3779B185EBCA87ULL;
inline constexpr uint64_t kPrime64_2 = 0xC2B2AE3D27D4EB4FULL;
inline constexpr uint64_t kPrime64_3 = 0x165667B19E3779F9ULL;
inline constexpr uint64_t kPrime64_4 = 0x85EBCA77C2B2AE63ULL;
inline constexpr uint64_t kPrime64_5 = 0x27D4EB2F165667C5ULL;
inline constexpr uint64_t kPrimeMx1 = 0x165667919E3779F9ULL;
inline constexpr uint64_t kPrimeMx2 = 0x9FB21C651E98DF25ULL;

// Geometry of the default secret (192 bytes).
inline constexpr uint64_t kMidSizeMax = 240;  // inputs above this take the long path
inline constexpr int kLanes = 8;
inline constexpr uint64_t kStripeBytes = 64;
inline constexpr int kStripesPerBlock = 16;  // (192 - 64) / 8
inline constexpr uint64_t kBlockBytes = kStripeBytes * kStripesPerBlock;
inline constexpr int kScrambleSecretOffset = 192 - 64;
inline constexpr int kLastStripeSecretOffset = 192 - 64 - 7;
inline constexpr int kMergeSecretOffset = 11;
inline constexpr int kMidSizeStartOffset = 3;
inline constexpr int kMidSizeLastOffset = 136 - 17;  // minimum secret size - 17

// The default secret as 24 little-endian words. Host code reads a constexpr array; device code a
// __constant__ copy (a host array cannot be read from device code, and a local array would be
// rebuilt on every call). Callers on hot paths read the words they need once (KeysForLane).
#define FERRY_XXH3_SECRET_WORDS                                                                   \
  0xbe4ba423396cfeb8ULL, 0x1cad21f72c81017cULL, 0xdb979083e96dd4deULL, 0x1f67b3b7a4a44072ULL,     \
      0x78e5c0cc4ee679cbULL, 0x2172ffcc7dd05a82ULL, 0x8e2443f7744608b8ULL, 0x4c263a81e69035e0ULL, \
      0xcb00c391bb52283cULL, 0xa32e531b8b65d088ULL, 0x4ef90da297486471ULL, 0xd8acdea946ef1938ULL, \
      0x3f349ce33f76faa8ULL, 0x1d4f0bc7c7bbdcf9ULL, 0x3159b4cd4be0518aULL, 0x647378d9c97e9fc8ULL, \
      0xc3ebd33483acc5eaULL, 0xeb6313faffa081c5ULL, 0x49daf0b751dd0d17ULL, 0x9e68d429265516d3ULL, \
      0xfca1477d58be162bULL, 0xce31d07ad1b8f88fULL, 0x280416958f3acb45ULL, 0x7e404bbbcafbd7afULL

inline constexpr uint64_t kHostSecretWords[24] = {FERRY_XXH3_SECRET_WORDS};
#ifdef __CUDACC__
// Internal linkage: only the kernel's translation unit is compiled by nvcc.
static __constant__ uint64_t kDeviceSecretWords[24] = {FERRY_XXH3_SECRET_WORDS};
#endif
#undef FERRY_XXH3_SECRET_WORDS

// Word i of the default secret. REQUIRES: 0 <= i < 24.
FERRY_HD inline uint64_t SecretWord(int i) {
#ifdef __CUDA_ARCH__
  return kDeviceSecretWords[i];
#else
  return kHostSecretWords[i];
#endif
}

// The 8 secret bytes at byte `offset` as a little-endian word. REQUIRES: offset + 8 <= 192.
FERRY_HD inline uint64_t Secret64(int offset) {
  const int word = offset >> 3;
  const int shift = (offset & 7) * 8;
  const uint64_t low = SecretWord(word);
  return shift == 0 ? low : (low >> shift) | (SecretWord(word + 1) << (64 - shift));
}

FERRY_HD inline uint32_t Secret32(int offset) { return static_cast<uint32_t>(Secret64(offset)); }

FERRY_HD inline uint64_t Read64(const uint8_t* p) {
#ifdef __CUDA_ARCH__
  if ((reinterpret_cast<uintptr_t>(p) & 7) == 0) return *reinterpret_cast<const uint64_t*>(p);
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
#else
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
#endif
}

FERRY_HD inline uint32_t Read32(const uint8_t* p) {
#ifdef __CUDA_ARCH__
  if ((reinterpret_cast<uintptr_t>(p) & 3) == 0) return *reinterpret_cast<const uint32_t*>(p);
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
#else
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
#endif
}

FERRY_HD inline uint64_t Rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

FERRY_HD inline uint64_t Bswap64(uint64_t x) {
#ifdef __CUDA_ARCH__
  const uint32_t lo = static_cast<uint32_t>(x);
  const uint32_t hi = static_cast<uint32_t>(x >> 32);
  return (static_cast<uint64_t>(__byte_perm(lo, 0, 0x0123)) << 32) | __byte_perm(hi, 0, 0x0123);
#else
  return __builtin_bswap64(x);
#endif
}

// The 128-bit product of a and b, its two halves xor'ed.
FERRY_HD inline uint64_t Mul128Fold64(uint64_t a, uint64_t b) {
#ifdef __CUDA_ARCH__
  return (a * b) ^ __umul64hi(a, b);
#else
  const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(product) ^ static_cast<uint64_t>(product >> 64);
#endif
}

// The spec's avalanche().
FERRY_HD inline uint64_t Avalanche(uint64_t x) {
  x ^= x >> 37;
  x *= kPrimeMx1;
  return x ^ (x >> 32);
}

// The spec's avalanche_XXH64().
FERRY_HD inline uint64_t AvalancheXxh64(uint64_t x) {
  x ^= x >> 33;
  x *= kPrime64_2;
  x ^= x >> 29;
  x *= kPrime64_3;
  return x ^ (x >> 32);
}

// ---- 0 to 16 bytes ----

FERRY_HD inline uint64_t Hash64Empty() { return AvalancheXxh64(Secret64(56) ^ Secret64(64)); }

FERRY_HD inline uint64_t Hash64Len1To3(const uint8_t* p, uint64_t len) {
  const uint32_t combined = static_cast<uint32_t>(p[len - 1]) | static_cast<uint32_t>(len << 8) |
                            (static_cast<uint32_t>(p[0]) << 16) |
                            (static_cast<uint32_t>(p[len >> 1]) << 24);
  const uint64_t keyed = static_cast<uint64_t>(Secret32(0) ^ Secret32(4)) ^ combined;
  return AvalancheXxh64(keyed);
}

FERRY_HD inline uint64_t Hash64Len4To8(const uint8_t* p, uint64_t len) {
  const uint64_t first = Read32(p);
  const uint64_t last = Read32(p + len - 4);
  uint64_t v = (Secret64(8) ^ Secret64(16)) ^ (last | (first << 32));
  v ^= Rotl64(v, 49) ^ Rotl64(v, 24);
  v *= kPrimeMx2;
  v ^= (v >> 35) + len;
  v *= kPrimeMx2;
  return v ^ (v >> 28);
}

FERRY_HD inline uint64_t Hash64Len9To16(const uint8_t* p, uint64_t len) {
  const uint64_t low = (Secret64(24) ^ Secret64(32)) ^ Read64(p);
  const uint64_t high = (Secret64(40) ^ Secret64(48)) ^ Read64(p + len - 8);
  return Avalanche(len + Bswap64(low) + high + Mul128Fold64(low, high));
}

// ---- 17 to 240 bytes ----

// The spec's mixStep: 16 input bytes against 16 secret bytes.
FERRY_HD inline uint64_t Mix16(const uint8_t* p, int secret_offset) {
  return Mul128Fold64(Read64(p) ^ Secret64(secret_offset),
                      Read64(p + 8) ^ Secret64(secret_offset + 8));
}

FERRY_HD inline uint64_t Hash64Len17To128(const uint8_t* p, uint64_t len) {
  uint64_t acc = len * kPrime64_1;
  const int rounds = static_cast<int>((len - 1) >> 5) + 1;
  for (int i = 0; i < rounds; ++i) {
    acc += Mix16(p + 16 * i, 32 * i);
    acc += Mix16(p + len - 16 * i - 16, 32 * i + 16);
  }
  return Avalanche(acc);
}

FERRY_HD inline uint64_t Hash64Len129To240(const uint8_t* p, uint64_t len) {
  uint64_t acc = len * kPrime64_1;
  for (int i = 0; i < 8; ++i) acc += Mix16(p + 16 * i, 16 * i);
  acc = Avalanche(acc);
  const int chunks = static_cast<int>(len >> 4);
  for (int i = 8; i < chunks; ++i) acc += Mix16(p + 16 * i, 16 * (i - 8) + kMidSizeStartOffset);
  acc += Mix16(p + len - 16, kMidSizeLastOffset);
  return Avalanche(acc);
}

// ---- above 240 bytes: 8 lanes over stripes and blocks ----

// The secret words one lane uses: one per stripe of a block, the scramble word, the word for the
// input's last stripe.
struct LaneKeys {
  uint64_t stripe[kStripesPerBlock];
  uint64_t scramble;
  uint64_t last;
};

FERRY_HD inline LaneKeys KeysForLane(int lane) {
  LaneKeys keys;
  for (int n = 0; n < kStripesPerBlock; ++n) keys.stripe[n] = Secret64(8 * n + 8 * lane);
  keys.scramble = Secret64(kScrambleSecretOffset + 8 * lane);
  keys.last = Secret64(kLastStripeSecretOffset + 8 * lane);
  return keys;
}

// The initial value of accumulator `lane` (0..7).
FERRY_HD inline uint64_t LaneInit(int lane) {
  switch (lane) {
    case 0:
      return kPrime32_3;
    case 1:
      return kPrime64_1;
    case 2:
      return kPrime64_2;
    case 3:
      return kPrime64_3;
    case 4:
      return kPrime64_4;
    case 5:
      return kPrime32_2;
    case 6:
      return kPrime64_5;
    default:
      return kPrime32_1;
  }
}

// One stripe's update of one lane: `own` is data word `lane` of the stripe, `partner` is word
// lane ^ 1, `key` the lane's secret word for this stripe.
FERRY_HD inline uint64_t AccumulateLane(uint64_t acc, uint64_t own, uint64_t partner,
                                        uint64_t key) {
  const uint64_t v = own ^ key;
  return acc + partner + (v & 0xFFFFFFFFULL) * (v >> 32);
}

// The end-of-block scramble of one lane.
FERRY_HD inline uint64_t ScrambleLane(uint64_t acc, uint64_t key) {
  acc ^= acc >> 47;
  acc ^= key;
  return acc * kPrime32_1;
}

// Accumulator `lane` after the whole long-input pass over p[0, len) (blocks, scrambles, the last
// partial block and the final overlapping stripe). REQUIRES: len > kMidSizeMax, lane in [0, 8).
FERRY_HD inline uint64_t LongLane(const uint8_t* p, uint64_t len, int lane, const LaneKeys& keys) {
  const int own = 8 * lane;
  const int partner = 8 * (lane ^ 1);
  uint64_t acc = LaneInit(lane);
  const uint64_t blocks = (len - 1) / kBlockBytes;
  for (uint64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = p + b * kBlockBytes;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
    for (int n = 0; n < kStripesPerBlock; ++n) {
      const uint8_t* stripe = block + n * kStripeBytes;
      acc = AccumulateLane(acc, Read64(stripe + own), Read64(stripe + partner), keys.stripe[n]);
    }
    acc = ScrambleLane(acc, keys.scramble);
  }
  const uint8_t* last_block = p + blocks * kBlockBytes;
  const int full_stripes = static_cast<int>((len - blocks * kBlockBytes - 1) / kStripeBytes);
  // A fixed trip count with a guard, so that keys.stripe is indexed by constants (registers on
  // the device, not a stack copy).
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int n = 0; n < kStripesPerBlock; ++n) {
    if (n < full_stripes) {
      const uint8_t* stripe = last_block + n * kStripeBytes;
      acc = AccumulateLane(acc, Read64(stripe + own), Read64(stripe + partner), keys.stripe[n]);
    }
  }
  const uint8_t* tail = p + len - kStripeBytes;
  return AccumulateLane(acc, Read64(tail + own), Read64(tail + partner), keys.last);
}

// The final merge of the 8 lanes of an input of `len` bytes into the hash.
FERRY_HD inline uint64_t MergeLanes(const uint64_t acc[kLanes], uint64_t len) {
  uint64_t result = len * kPrime64_1;
  for (int i = 0; i < 4; ++i) {
    const int offset = kMergeSecretOffset + 16 * i;
    result += Mul128Fold64(acc[2 * i] ^ Secret64(offset), acc[2 * i + 1] ^ Secret64(offset + 8));
  }
  return Avalanche(result);
}

// The long path lane by lane, as the kernel splits it (each LongLane could run on its own thread).
FERRY_HD inline uint64_t Hash64LongByLanes(const uint8_t* p, uint64_t len) {
  uint64_t acc[kLanes];
  for (int lane = 0; lane < kLanes; ++lane) acc[lane] = LongLane(p, len, lane, KeysForLane(lane));
  return MergeLanes(acc, len);
}

// One stripe's update of all 8 lanes (the host's order: one pass over memory).
FERRY_HD inline void AccumulateStripe(uint64_t acc[kLanes], const uint8_t* stripe,
                                      const uint64_t keys[kLanes]) {
  // AccumulateLane for each lane, written as separate passes so that compilers vectorise them.
  uint64_t words[kLanes];
  for (int lane = 0; lane < kLanes; ++lane) words[lane] = Read64(stripe + 8 * lane);
  for (int lane = 0; lane < kLanes; ++lane) {
    const uint64_t v = words[lane] ^ keys[lane];
    acc[lane] += (v & 0xFFFFFFFFULL) * (v >> 32);
  }
  for (int lane = 0; lane < kLanes; lane += 2) {
    acc[lane] += words[lane + 1];
    acc[lane + 1] += words[lane];
  }
}

// The long path stripe by stripe, all 8 lanes at once: the same lane operations as LongLane, in
// the order that reads memory once (the host's; compilers vectorise the lane loops).
FERRY_HD inline uint64_t Hash64Long(const uint8_t* p, uint64_t len) {
  uint64_t keys[kStripesPerBlock][kLanes];
  for (int n = 0; n < kStripesPerBlock; ++n) {
    for (int lane = 0; lane < kLanes; ++lane) keys[n][lane] = Secret64(8 * n + 8 * lane);
  }
  uint64_t scramble[kLanes];
  uint64_t last[kLanes];
  uint64_t acc[kLanes];
  for (int lane = 0; lane < kLanes; ++lane) {
    scramble[lane] = Secret64(kScrambleSecretOffset + 8 * lane);
    last[lane] = Secret64(kLastStripeSecretOffset + 8 * lane);
    acc[lane] = LaneInit(lane);
  }
  const uint64_t blocks = (len - 1) / kBlockBytes;
  for (uint64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = p + b * kBlockBytes;
    for (int n = 0; n < kStripesPerBlock; ++n) {
      AccumulateStripe(acc, block + n * kStripeBytes, keys[n]);
    }
    for (int lane = 0; lane < kLanes; ++lane) acc[lane] = ScrambleLane(acc[lane], scramble[lane]);
  }
  const uint8_t* last_block = p + blocks * kBlockBytes;
  const int full_stripes = static_cast<int>((len - blocks * kBlockBytes - 1) / kStripeBytes);
  for (int n = 0; n < full_stripes; ++n) {
    AccumulateStripe(acc, last_block + n * kStripeBytes, keys[n]);
  }
  AccumulateStripe(acc, p + len - kStripeBytes, last);
  return MergeLanes(acc, len);
}

// XXH3-64 of an input of at most kMidSizeMax bytes (the kernel's short last leaf, without the
// long path's code). REQUIRES: len <= kMidSizeMax; `p` may be null when len is 0.
FERRY_HD inline uint64_t Hash64Short(const uint8_t* p, uint64_t len) {
  if (len == 0) return Hash64Empty();
  if (len <= 3) return Hash64Len1To3(p, len);
  if (len <= 8) return Hash64Len4To8(p, len);
  if (len <= 16) return Hash64Len9To16(p, len);
  if (len <= 128) return Hash64Len17To128(p, len);
  return Hash64Len129To240(p, len);
}

// XXH3_64bits(p, len): XXH3-64, seed 0, default secret. `p` may be null when len is 0.
FERRY_HD inline uint64_t Hash64(const uint8_t* p, uint64_t len) {
  return len <= kMidSizeMax ? Hash64Short(p, len) : Hash64Long(p, len);
}

}  // namespace ferry::internal::cuda::xxh3

#endif  // FERRY_CUDA_XXH3_CORE_H_
