// GetTransferInfo and GetTensorManifest served from one prepared copy (raw_service.h): the
// answers' bytes, and what many concurrent requests cost when targets do not read their
// answers. Real gRPC over loopback.
#include "worker/raw_service.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/fd.h"
#include "model_express/p2p.pb.h"
#include "worker/worker_server.h"

namespace ferry::worker {
namespace {

constexpr char kTransferInfo[] = "/ferry.v1.FerryWorkerService/GetTransferInfo";
constexpr char kTensorManifest[] = "/model_express.p2p.WorkerService/GetTensorManifest";

std::unique_ptr<WorkerState> LargeState(int tensors) {
  WorkerManifest m;
  m.worker_id = "w-1";
  m.worker_rank = 1;
  m.transfer_blob = std::string(300, 'b');
  m.region_base_addresses = {0x7f0000000000ull};
  m.metadata = {{"format", "pt"}};
  m.tensors.reserve(tensors);
  for (int i = 0; i < tensors; ++i) {
    ferry::v1::TensorEntry& t = m.tensors.emplace_back();
    t.set_name(absl::StrCat("model.layers.", i / 1000, ".mlp.experts.", i % 1000, ".weight"));
    t.set_dtype("BF16");
    t.add_shape(64);
    t.add_shape(32);
    t.set_offset(static_cast<uint64_t>(i) * 4096);
    t.set_size(4096);
    t.set_checksum(0x9e3779b97f4a7c15ull * (i + 1));
  }
  auto state = WorkerState::Create(std::move(m));
  EXPECT_TRUE(state.ok()) << state.status();
  return state.ok() ? std::move(*state) : nullptr;
}

std::unique_ptr<WorkerServer> Start(const WorkerState* state, int max_concurrent_requests = 64) {
  auto server = WorkerServer::Create({.state = state,
                                      .listen = "127.0.0.1:0",
                                      .max_concurrent_requests = max_concurrent_requests});
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  Status s = (*server)->Start();
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? std::move(*server) : nullptr;
}

// Resident set size of this process, in bytes.
int64_t RssBytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  const int n = std::fscanf(f, "%ld %ld", &pages, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE) : -1;
}

// The raw answer to one request, as the bytes on the wire.
StatusOr<std::string> RawCall(const std::string& endpoint, const std::string& request,
                              const char* method = kTransferInfo) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // a 100,000-tensor answer is several MB
  auto channel = grpc::CreateCustomChannel(endpoint, grpc::InsecureChannelCredentials(), args);
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Slice in(request);
  grpc::ByteBuffer request_buffer(&in, 1);
  auto call = stub.PrepareUnaryCall(&ctx, method, request_buffer, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok) || !ok) return absl::InternalError("completion queue failed");
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!response.Dump(&slices).ok()) return absl::InternalError("cannot read the answer");
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

TEST(RawServiceTest, AnswersAreTheSerializedResponsesByteForByte) {
  auto state = LargeState(1000);
  ASSERT_NE(state, nullptr);
  auto server = Start(state.get());
  ASSERT_NE(server, nullptr);
  for (const std::string sid : {"", "5a5f555570065064"}) {
    state->SetMxSourceId(sid);
    ferry::v1::GetTransferInfoResponse info;
    state->FillTransferInfo(sid, &info);
    EXPECT_EQ(info.tensors_size(), 1000);
    EXPECT_EQ(info.mx_source_id(), sid);
    ferry::v1::GetTransferInfoRequest info_request;
    info_request.set_worker_id("w-1");
    auto got = RawCall(server->endpoint(), info_request.SerializeAsString(), kTransferInfo);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == info.SerializeAsString())
        << "GetTransferInfo answer differs for mx_source_id '" << sid << "'";

    model_express::p2p::GetTensorManifestResponse manifest;
    state->FillTensorManifest(sid, &manifest);
    EXPECT_EQ(manifest.tensors_size(), 1000);
    model_express::p2p::GetTensorManifestRequest manifest_request;
    manifest_request.set_mx_source_id(sid);
    got = RawCall(server->endpoint(), manifest_request.SerializeAsString(), kTensorManifest);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == manifest.SerializeAsString())
        << "GetTensorManifest answer differs for mx_source_id '" << sid << "'";
  }
  // The request checks still apply, and a request that is not one is refused.
  for (const char* method : {kTransferInfo, kTensorManifest}) {
    ferry::v1::GetTransferInfoRequest other;  // same fields as GetTensorManifestRequest
    other.set_worker_id("w-0");
    auto mismatch = RawCall(server->endpoint(), other.SerializeAsString(), method);
    EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kFailedPrecondition) << method;
    EXPECT_THAT(mismatch.status().message(), ::testing::HasSubstr("worker_id mismatch"));
    auto garbage = RawCall(server->endpoint(), std::string("\xff\xff\xff", 3), method);
    EXPECT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument) << method;
    EXPECT_THAT(garbage.status().message(), ::testing::HasSubstr("request does not parse as a"));
  }
}

// A minimal HTTP/2 client that asks for answers and never reads them: it announces a stream
// window of 0, so the endpoint must hold every answer until the target would read it.
class StalledTarget {
 public:
  static StatusOr<StalledTarget> Connect(int port, const char* method) {
    ferry::internal::Fd fd(socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd.get() < 0 || connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot connect to port ", port));
    }
    StalledTarget t(std::move(fd), port, method);
    std::string out = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    Frame(&out, 0x4, 0, 0, std::string("\x00\x04\x00\x00\x00\x00", 6));  // INITIAL_WINDOW_SIZE 0
    FERRY_RETURN_IF_ERROR(t.Send(out));
    // The endpoint applies its limits (streams per connection) once its SETTINGS are acked.
    FERRY_RETURN_IF_ERROR(t.ReadUntil([&t] { return t.settings_acked_; },
                                      absl::Now() + absl::Seconds(30), "the endpoint's SETTINGS"));
    return t;
  }

  // Sends an empty request for the method on `count` new streams.
  Status Request(int count) {
    std::string out;
    for (int i = 0; i < count; ++i) {
      const uint32_t id = next_stream_;
      next_stream_ += 2;
      std::string block;
      for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
               {":method", "POST"},
               {":scheme", "http"},
               {":path", method_},
               {":authority", absl::StrCat("127.0.0.1:", port_)},
               {"content-type", "application/grpc"},
               {"te", "trailers"}}) {
        block += '\0';  // literal header field without indexing, new name (RFC 7541 6.2.2)
        block += static_cast<char>(name.size());
        block += name;
        block += static_cast<char>(value.size());
        block += value;
      }
      Frame(&out, 0x1, 0x4, id, block);                         // HEADERS, END_HEADERS
      Frame(&out, 0x0, 0x1, id, std::string("\0\0\0\0\0", 5));  // empty request, END_STREAM
    }
    return Send(out);
  }

  // Reads frames (acknowledging SETTINGS and PINGs) until every stream opened so far has an
  // answer's HEADERS or a reset, or until `deadline`.
  Status AwaitAnswerHeaders(absl::Time deadline) {
    const size_t want = (next_stream_ - 1) / 2;
    return ReadUntil([&] { return seen_.size() >= want; }, deadline,
                     absl::StrCat(want, " streams answered or ended"));
  }

  // Streams with an answer waiting to be read (HEADERS without END_STREAM), and streams that
  // ended without one (an error's trailers-only HEADERS, or RST_STREAM).
  size_t answered() const { return answered_.size(); }
  size_t ended() const { return ended_.size(); }

 private:
  template <typename Done>
  Status ReadUntil(Done done, absl::Time deadline, const std::string& what) {
    while (!done()) {
      pollfd p{fd_.get(), POLLIN, 0};
      const int left = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (left <= 0 || poll(&p, 1, left) <= 0) {
        return absl::DeadlineExceededError(absl::StrCat(
            "waiting for ", what, ": ", answered_.size(), " answered, ", ended_.size(), " ended"));
      }
      char buf[65536];
      const ssize_t n = read(fd_.get(), buf, sizeof(buf));
      if (n <= 0) return absl::UnavailableError("the endpoint closed the connection");
      in_.append(buf, static_cast<size_t>(n));
      while (in_.size() >= 9) {
        const auto* h = reinterpret_cast<const unsigned char*>(in_.data());
        const size_t len = (size_t{h[0]} << 16) | (size_t{h[1]} << 8) | h[2];
        if (in_.size() < 9 + len) break;
        const uint8_t type = h[3], flags = h[4];
        const uint32_t stream =
            ((uint32_t{h[5]} & 0x7f) << 24) | (uint32_t{h[6]} << 16) | (uint32_t{h[7]} << 8) | h[8];
        const std::string payload = in_.substr(9, len);
        in_.erase(0, 9 + len);
        if (type == 0x4 && !(flags & 0x1)) {
          std::string ack;
          Frame(&ack, 0x4, 0x1, 0, "");
          FERRY_RETURN_IF_ERROR(Send(ack));
          settings_acked_ = true;
        } else if (type == 0x6 && !(flags & 0x1)) {
          std::string ack;
          Frame(&ack, 0x6, 0x1, 0, payload);
          FERRY_RETURN_IF_ERROR(Send(ack));
        } else if (type == 0x7) {
          return absl::UnavailableError("the endpoint sent GOAWAY");
        } else if (type == 0x1 || type == 0x3) {
          seen_.insert(stream);
          if (type == 0x1 && !(flags & 0x1)) {
            answered_.insert(stream);
          } else {
            answered_.erase(stream);
            ended_.insert(stream);
          }
        }
      }
    }
    return absl::OkStatus();
  }

  StalledTarget(ferry::internal::Fd fd, int port, const char* method)
      : fd_(std::move(fd)), port_(port), method_(method) {}

  static void Frame(std::string* out, uint8_t type, uint8_t flags, uint32_t stream,
                    const std::string& payload) {
    const size_t n = payload.size();
    const char header[9] = {static_cast<char>(n >> 16),
                            static_cast<char>(n >> 8),
                            static_cast<char>(n),
                            static_cast<char>(type),
                            static_cast<char>(flags),
                            static_cast<char>(stream >> 24),
                            static_cast<char>(stream >> 16),
                            static_cast<char>(stream >> 8),
                            static_cast<char>(stream)};
    out->append(header, 9);
    out->append(payload);
  }
  Status Send(const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = write(fd_.get(), bytes.data() + done, bytes.size() - done);
      if (n <= 0) return absl::UnavailableError("write to the endpoint failed");
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  ferry::internal::Fd fd_;
  int port_;
  const char* method_;
  uint32_t next_stream_ = 1;
  std::string in_;
  bool settings_acked_ = false;
  std::set<uint32_t> seen_;
  std::set<uint32_t> answered_;
  std::set<uint32_t> ended_;
};

// Regression: every GetTransferInfo built and serialized its own copy of the answer, and gRPC
// held each until the target read it: 300 requests against a 100,000-tensor source took the
// endpoint from 147 MB to 3.65 GB. GetTensorManifest (ModelExpress's) did the same.
class UnreadAnswersTest : public ::testing::TestWithParam<const char*> {};

TEST_P(UnreadAnswersTest, ShareOneCopy) {
  constexpr int kTensors = 100000;
  constexpr int kRequests = 64;
  constexpr int64_t kBound = 96ll << 20;
  auto state = LargeState(kTensors);
  ASSERT_NE(state, nullptr);
  const int64_t answer = [&] {
    if (GetParam() == kTensorManifest) {
      model_express::p2p::GetTensorManifestResponse full;
      state->FillTensorManifest("", &full);
      return static_cast<int64_t>(full.ByteSizeLong());
    }
    ferry::v1::GetTransferInfoResponse full;
    state->FillTransferInfo("", &full);
    return static_cast<int64_t>(full.ByteSizeLong());
  }();
  // Sanity: copies of the answer for every request would exceed the bound several times.
  ASSERT_GT(answer * kRequests, 3 * kBound) << "answer is only " << answer << " bytes";
  auto server = Start(state.get());
  ASSERT_NE(server, nullptr);
  // Warm up the endpoint's threads and buffers with one answered request.
  ASSERT_TRUE(RawCall(server->endpoint(), "", GetParam()).ok());
  const int64_t before = RssBytes();
  ASSERT_GT(before, 0);

  auto target = StalledTarget::Connect(server->port(), GetParam());
  ASSERT_TRUE(target.ok()) << target.status();
  ASSERT_TRUE(target->Request(kRequests).ok());
  Status answered = target->AwaitAnswerHeaders(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(answered.ok()) << answered;
  EXPECT_EQ(target->answered(), static_cast<size_t>(kRequests));
  const int64_t growth = RssBytes() - before;
  EXPECT_LT(growth, kBound) << kRequests << " unread answers of " << answer << " bytes grew RSS by "
                            << growth << " bytes";
  // The endpoint still answers a target that reads.
  auto got = RawCall(server->endpoint(), "", GetParam());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), static_cast<size_t>(answer));
}

// A connection holds at most kMaxStreamsPerConnection calls. A gRPC client queues more; a client
// that opens more anyway loses the connection, and with it every call it held.
TEST(RawServiceTest, StreamsPerConnectionAreBounded) {
  auto state = LargeState(10);
  ASSERT_NE(state, nullptr);
  // Every request admitted, so that answered streams stay open, waiting for the target.
  auto server = Start(state.get(), /*max_concurrent_requests=*/1000);
  ASSERT_NE(server, nullptr);
  auto target = StalledTarget::Connect(server->port(), kTransferInfo);
  ASSERT_TRUE(target.ok()) << target.status();
  ASSERT_TRUE(target->Request(kMaxStreamsPerConnection).ok());
  Status held = target->AwaitAnswerHeaders(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(held.ok()) << held;
  EXPECT_EQ(target->answered(), static_cast<size_t>(kMaxStreamsPerConnection));
  EXPECT_EQ(target->ended(), 0u);
  ASSERT_TRUE(target->Request(1).ok());
  Status over = target->AwaitAnswerHeaders(absl::Now() + absl::Seconds(60));
  EXPECT_EQ(over.code(), absl::StatusCode::kUnavailable) << over;
  EXPECT_EQ(target->answered(), 0u) << "calls still held after the connection failed";
}

INSTANTIATE_TEST_SUITE_P(WorkerEndpoint, UnreadAnswersTest,
                         ::testing::Values(kTransferInfo, kTensorManifest),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return info.param == kTransferInfo ? "GetTransferInfo"
                                                              : "GetTensorManifest";
                         });

}  // namespace
}  // namespace ferry::worker
