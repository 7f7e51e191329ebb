#include "artifacts/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace ferry::artifacts {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

// Slicing-by-8 tables: kTables[0] is the classic byte table; kTables[k][b] is the CRC of byte b
// followed by k zero bytes.
struct Tables {
  uint32_t t[8][256];
};

constexpr Tables MakeTables() {
  Tables tables{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
    tables.t[0][b] = c;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t prev = tables.t[k - 1][b];
      tables.t[k][b] = (prev >> 8) ^ tables.t[0][prev & 0xff];
    }
  }
  return tables;
}

constexpr Tables kTables = MakeTables();

// Raw state update (no pre/post inversion) over `size` bytes, slicing-by-8.
uint32_t PortableUpdate(uint32_t state, const uint8_t* p, size_t size) {
  const auto& t = kTables.t;
  while (size >= 8) {
    uint32_t lo;
    uint32_t hi;
    std::memcpy(&lo, p, 4);  // little-endian loads (x86-64, aarch64)
    std::memcpy(&hi, p + 4, 4);
    lo ^= state;
    state = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
            t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size-- > 0) state = (state >> 8) ^ t[0][(state ^ *p++) & 0xff];
  return state;
}

#if defined(__x86_64__)

// A linear operator on the raw state: "append `len` zero bytes", as four byte tables, so that
// shifting one stream's CRC past the streams after it costs four lookups.
struct ZeroShift {
  uint32_t t[4][256];
  uint32_t Apply(uint32_t s) const {
    return t[0][s & 0xff] ^ t[1][(s >> 8) & 0xff] ^ t[2][(s >> 16) & 0xff] ^ t[3][s >> 24];
  }
};

ZeroShift MakeZeroShift(size_t len) {
  // The operator is linear over GF(2), so its image of each basis bit determines it.
  static const uint8_t kZeros[4096] = {};
  uint32_t basis[32];
  for (int i = 0; i < 32; ++i) {
    uint32_t s = 1u << i;
    for (size_t left = len; left > 0;) {
      size_t n = left < sizeof(kZeros) ? left : sizeof(kZeros);
      s = PortableUpdate(s, kZeros, n);
      left -= n;
    }
    basis[i] = s;
  }
  ZeroShift z{};
  for (int k = 0; k < 4; ++k) {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t v = 0;
      for (int bit = 0; bit < 8; ++bit) {
        if (b & (1u << bit)) v ^= basis[k * 8 + bit];
      }
      z.t[k][b] = v;
    }
  }
  return z;
}

// Three independent streams hide the crc32 instruction's 3-cycle latency (throughput 1/cycle).
constexpr size_t kLongStream = 8192;
constexpr size_t kShortStream = 256;

__attribute__((target("sse4.2"))) uint32_t HwWords(uint32_t state, const uint8_t* p, size_t n) {
  uint64_t s = state;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    s = _mm_crc32_u64(s, w);
  }
  uint32_t s32 = static_cast<uint32_t>(s);
  for (; n > 0; --n) s32 = _mm_crc32_u8(s32, *p++);
  return s32;
}

// REQUIRES: stream is a multiple of 8.
__attribute__((target("sse4.2"))) uint32_t HwThreeWay(uint32_t state, const uint8_t*& p,
                                                      size_t& size, size_t stream,
                                                      const ZeroShift& shift) {
  while (size >= 3 * stream) {
    uint64_t a = state;
    uint64_t b = 0;
    uint64_t c = 0;
    const uint8_t* pa = p;
    const uint8_t* pb = p + stream;
    const uint8_t* pc = p + 2 * stream;
    for (size_t i = 0; i < stream; i += 8) {
      uint64_t wa;
      uint64_t wb;
      uint64_t wc;
      std::memcpy(&wa, pa + i, 8);
      std::memcpy(&wb, pb + i, 8);
      std::memcpy(&wc, pc + i, 8);
      a = _mm_crc32_u64(a, wa);
      b = _mm_crc32_u64(b, wb);
      c = _mm_crc32_u64(c, wc);
    }
    // crc(A B C) = shift(shift(a) ^ b) ^ c, with the raw (uninverted) states.
    state = shift.Apply(shift.Apply(static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b)) ^
            static_cast<uint32_t>(c);
    p += 3 * stream;
    size -= 3 * stream;
  }
  return state;
}

#endif  // __x86_64__

}  // namespace

uint32_t Crc32cPortable(const void* data, size_t size, uint32_t crc) {
  return ~PortableUpdate(~crc, static_cast<const uint8_t*>(data), size);
}

bool Crc32cHardwareAvailable() {
#if defined(__x86_64__)
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
#else
  return false;
#endif
}

uint32_t Crc32cHardware(const void* data, size_t size, uint32_t crc) {
#if defined(__x86_64__)
  static const ZeroShift kLongShift = MakeZeroShift(kLongStream);
  static const ZeroShift kShortShift = MakeZeroShift(kShortStream);
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t state = ~crc;
  // Align to 8 bytes so the word loads below are aligned.
  size_t head = (8 - (reinterpret_cast<uintptr_t>(p) & 7)) & 7;
  if (head > size) head = size;
  state = HwWords(state, p, head);
  p += head;
  size -= head;
  state = HwThreeWay(state, p, size, kLongStream, kLongShift);
  state = HwThreeWay(state, p, size, kShortStream, kShortShift);
  return ~HwWords(state, p, size);
#else
  return Crc32cPortable(data, size, crc);
#endif
}

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  return Crc32cHardwareAvailable() ? Crc32cHardware(data, size, crc)
                                   : Crc32cPortable(data, size, crc);
}

std::string Crc32cHex(uint32_t crc) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(8, '0');
  for (int i = 7; i >= 0; --i, crc >>= 4) out[i] = kHex[crc & 0xf];
  return out;
}

}  // namespace ferry::artifacts
