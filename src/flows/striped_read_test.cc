// The striped read over real transfer engines on loopback TCP: several sources holding one
// model (laid out differently), one of them serving corrupt bytes, one stopping mid-read.
#include "flows/striped_read.h"

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {
namespace {

using ::testing::HasSubstr;

constexpr int kTensors = 12;
constexpr uint64_t kTensorBytes = 3 << 20;  // several pieces each at 1 MiB pieces

TransferEngineOptions Tcp(std::string name) {
  TransferEngineOptions o;
  o.name = std::move(name);
  o.enable_shm = o.enable_ucx = false;
  o.tcp_listen = "127.0.0.1:0";
  o.tcp_streams = 2;
  o.chunk_bytes = 1 << 20;
  return o;
}

// The model: kTensors tensors of random bytes.
struct Model {
  std::vector<std::string> tensors;
  Model() {
    std::mt19937_64 rng(7);
    for (int i = 0; i < kTensors; ++i) {
      std::string t(kTensorBytes, '\0');
      for (char& c : t) c = static_cast<char>(rng());
      tensors.push_back(std::move(t));
    }
  }
};

// A source: an engine whose one region holds the model's tensors at `order`'s positions, after
// `gap` bytes of padding, optionally with a byte of tensor `corrupt` flipped.
struct Source {
  std::unique_ptr<TransferEngine> engine;
  std::unique_ptr<Region> region;
  std::vector<RemoteSpot> spots;

  Source(const Model& model, std::string name, std::vector<int> order, uint64_t gap,
         int corrupt = -1) {
    engine = *TransferEngine::Create(Tcp(std::move(name)));
    region = *engine->AllocateRegion(gap + kTensors * kTensorBytes);
    spots.resize(kTensors);
    char* base = static_cast<char*>(region->data());
    for (int k = 0; k < kTensors; ++k) {
      const int i = order[k];
      const uint64_t at = gap + k * kTensorBytes;
      std::memcpy(base + at, model.tensors[i].data(), kTensorBytes);
      if (i == corrupt) base[at + kTensorBytes / 2] ^= 0x5a;
      spots[i] = RemoteSpot{region->id(), at};
    }
  }
};

struct Target {
  std::unique_ptr<TransferEngine> engine = *TransferEngine::Create(Tcp("target"));
  std::unique_ptr<Region> region = *engine->AllocateRegion(kTensors * kTensorBytes);
  std::vector<std::unique_ptr<Peer>> peers;

  std::vector<LandingVerifier::Tensor> Tensors(const Model& model) {
    std::vector<LandingVerifier::Tensor> out;
    for (int i = 0; i < kTensors; ++i) {
      out.push_back({"t" + std::to_string(i), static_cast<char*>(region->data()) + i * kTensorBytes,
                     kTensorBytes, TensorChecksum(model.tensors[i].data(), kTensorBytes)});
    }
    return out;
  }
  Peer* Connect(const Source& source) {
    peers.push_back(*engine->Connect(source.engine->ExportBlob()));
    return peers.back().get();
  }
  bool Holds(const Model& model) const {
    for (int i = 0; i < kTensors; ++i) {
      if (std::memcmp(static_cast<const char*>(region->data()) + i * kTensorBytes,
                      model.tensors[i].data(), kTensorBytes) != 0) {
        return false;
      }
    }
    return true;
  }
};

std::vector<int> Identity() {
  std::vector<int> order(kTensors);
  for (int i = 0; i < kTensors; ++i) order[i] = i;
  return order;
}

std::vector<int> Reversed() {
  std::vector<int> order = Identity();
  std::reverse(order.begin(), order.end());
  return order;
}

TEST(StripedReadTest, SourcesWithDifferentLayoutsEachDeliverAShare) {
  Model model;
  Source a(model, "a", Identity(), 0);
  Source b(model, "b", Reversed(), 4096);
  Target target;
  StripedRead read(target.Tensors(model), {});
  read.AddSource(target.Connect(a), "source a", a.spots);
  read.AddSource(target.Connect(b), "source b", b.spots);
  ReadOptions options;
  options.chunk_bytes = 1 << 20;
  const Status s = read.Run(options);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(read.complete());
  EXPECT_TRUE(target.Holds(model));
  ASSERT_EQ(read.sources().size(), 2u);
  EXPECT_EQ(read.sources()[0].bytes + read.sources()[1].bytes, kTensors * kTensorBytes);
  EXPECT_GT(read.sources()[0].bytes, 0u);
  EXPECT_GT(read.sources()[1].bytes, 0u);
  EXPECT_TRUE(read.sources()[0].status.ok());
  EXPECT_TRUE(read.sources()[1].status.ok());
}

// A source whose copy of one tensor is corrupt: that tensor is read again from the other, the
// corrupt source is named, and the result is the model.
TEST(StripedReadTest, ASourceServingCorruptBytesIsNamedAndItsTensorReadElsewhere) {
  Model model;
  Source good(model, "good", Identity(), 0);
  Source bad(model, "bad", Identity(), 0, /*corrupt=*/5);
  Target target;
  StripedRead read(target.Tensors(model), {});
  read.AddSource(target.Connect(good), "good source", good.spots);
  read.AddSource(target.Connect(bad), "bad source", bad.spots);
  ReadOptions options;
  options.chunk_bytes = 1 << 20;
  Status s = read.Run(options);
  // The bad source may have served tensor 5 (it is then dropped: Run returns so that the caller
  // may add sources) or not (the read completes at once).
  if (!s.ok()) s = read.Run(options);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(target.Holds(model));
  const SourceShare& named = read.sources()[1];
  if (!named.live) {
    EXPECT_EQ(named.status.code(), absl::StatusCode::kDataLoss) << named.status;
    EXPECT_THAT(named.status.message(), HasSubstr("tensor t5"));
  }
  EXPECT_TRUE(read.sources()[0].live);
}

// Both sources' copies of tensor 5 are needed in pieces, and one of them is corrupt: whichever
// pieces came from the bad source, the tensor is resolved by reading it from one source at a
// time, and exactly the bad source is blamed when its bytes were used.
TEST(StripedReadTest, EveryTensorFromTheCorruptSourceOnlyIsRefused) {
  Model model;
  Source bad(model, "bad", Identity(), 0, /*corrupt=*/0);
  Source good(model, "good", Reversed(), 512);
  Target target;
  StripedRead read(target.Tensors(model), {});
  read.AddSource(target.Connect(bad), "bad source", bad.spots);
  read.AddSource(target.Connect(good), "good source", good.spots);
  ReadOptions options;
  options.chunk_bytes = 1 << 20;
  Status s = read.Run(options);
  for (int round = 0; !s.ok() && round < 3; ++round) s = read.Run(options);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(target.Holds(model));
  EXPECT_TRUE(read.sources()[1].live);
  EXPECT_TRUE(read.sources()[1].status.ok());
}

// A source that stops mid-read: what it delivered is kept, the rest comes from the other.
TEST(StripedReadTest, ASourceThatStopsLosesOnlyWhatItHadNotDelivered) {
  Model model;
  Source a(model, "a", Identity(), 0);
  Source b(model, "b", Identity(), 0);
  Target target;
  StripedRead read(target.Tensors(model), {});
  read.AddSource(target.Connect(a), "source a", a.spots);
  read.AddSource(target.Connect(b), "source b", b.spots);
  ReadOptions options;
  options.chunk_bytes = 1 << 20;
  std::atomic<int> pieces{0};
  // Source b's engine stops after a few pieces landed (its connections close).
  Status s = read.Run(options, [&](const ReadOp&) {
    if (++pieces == 6) b.engine->Stop();
  });
  if (!s.ok()) s = read.Run(options);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(target.Holds(model));
  EXPECT_EQ(read.sources()[0].bytes + read.sources()[1].bytes, kTensors * kTensorBytes);
}

TEST(StripedReadTest, NoSourceLeftNamesEach) {
  Model model;
  Source a(model, "a", Identity(), 0, /*corrupt=*/0);
  Target target;
  StripedRead read(target.Tensors(model), {});
  read.AddSource(target.Connect(a), "only source", a.spots);
  ReadOptions options;
  options.chunk_bytes = 1 << 20;
  Status s = read.Run(options);
  if (read.live_sources() > 0) s = read.Run(options);
  EXPECT_FALSE(read.complete());
  s = read.Run(options);
  ASSERT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("no source is left"));
  EXPECT_THAT(s.message(), HasSubstr("only source: served tensor t0"));
}

}  // namespace
}  // namespace ferry::weights
