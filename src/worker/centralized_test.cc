#include "worker/centralized.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ferry::worker {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<WorkerState> MakeState() {
  WorkerManifest m;
  m.worker_id = "w-7";
  m.worker_rank = 1;
  m.accelerator = "cpu";
  m.agent_name = "agent";
  m.metadata_endpoint = "10.0.0.1:5555";
  m.transfer_blob = std::string("blob\0bytes", 10);
  m.region_base_addresses = {4096};
  ferry::v1::TensorEntry t;
  t.set_name("layer.0.weight");
  t.set_dtype("F16");
  t.add_shape(4);
  t.add_shape(8);
  t.set_offset(64);
  t.set_size(64);
  t.set_checksum(0xfeedfacecafebeefull);
  m.tensors = {t};
  auto state = WorkerState::Create(std::move(m));
  EXPECT_TRUE(state.ok()) << state.status();
  (*state)->SetMxSourceId("src-1");
  return std::move(*state);
}

TEST(CentralizedTest, RoundTrip) {
  auto state = MakeState();
  ferry::v1::GetTransferInfoResponse info;
  state->FillTransferInfo("src-1", &info);
  const std::string encoded = EncodeCentralizedMetadata(info);
  EXPECT_EQ(encoded.substr(0, 8), "FERRYTI1");
  auto decoded = DecodeCentralizedMetadata(encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->has_value());
  EXPECT_EQ((*decoded)->SerializeAsString(), info.SerializeAsString());
  EXPECT_EQ((*decoded)->transfer_blob(), std::string("blob\0bytes", 10));
  EXPECT_EQ((*decoded)->tensors(0).checksum(), 0xfeedfacecafebeefull);
}

TEST(CentralizedTest, NotOursIsNullopt) {
  for (std::string_view v :
       {std::string_view(""), std::string_view("nixl agent bytes"), std::string_view("FERRYTI")}) {
    auto decoded = DecodeCentralizedMetadata(v);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_FALSE(decoded->has_value()) << v;
  }
}

TEST(CentralizedTest, MalformedPayloadIsInvalidArgument) {
  auto decoded = DecodeCentralizedMetadata("FERRYTI1\xff\xff\xff");
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(decoded.status().message(),
              HasSubstr("starts with ferry's FERRYTI1 prefix but its 3 bytes are not a valid "
                        "ferry.v1.GetTransferInfoResponse"));
}

// A record's transfer info passes the checks a worker endpoint's answer passes.
TEST(CentralizedTest, DecodedInfoIsCheckedLikeAWorkerEndpointsAnswer) {
  auto state = MakeState();
  ferry::v1::GetTransferInfoResponse info;
  state->FillTransferInfo("src-1", &info);
  EXPECT_TRUE(DecodeCentralizedMetadata(EncodeCentralizedMetadata(info), "w-7").ok());

  auto wrong_worker = DecodeCentralizedMetadata(EncodeCentralizedMetadata(info), "w-8");
  EXPECT_EQ(wrong_worker.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong_worker.status().message(),
              HasSubstr("the source answered for worker 'w-7', not 'w-8'"));

  ferry::v1::GetTransferInfoResponse bad = info;
  bad.set_total_bytes(info.total_bytes() + 1);
  auto total = DecodeCentralizedMetadata(EncodeCentralizedMetadata(bad));
  EXPECT_EQ(total.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(total.status().message(), HasSubstr("tensor sizes add up to 64 bytes"));

  bad = info;
  *bad.add_tensors() = info.tensors(0);  // the same name twice
  bad.set_total_bytes(info.total_bytes() * 2);
  auto twice = DecodeCentralizedMetadata(EncodeCentralizedMetadata(bad));
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(twice.status().message(), HasSubstr("appears twice"));

  bad = info;
  bad.set_checksum_algorithm("md5-someday");
  auto algorithm = DecodeCentralizedMetadata(EncodeCentralizedMetadata(bad));
  EXPECT_EQ(algorithm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(algorithm.status().message(), HasSubstr("this ferry cannot verify that source"));
}

TEST(CentralizedTest, RecordsPerMode) {
  auto state = MakeState();
  model_express::p2p::WorkerMetadata p2p;
  FillP2pRecord(*state, "host:1234", &p2p);
  EXPECT_EQ(p2p.worker_grpc_endpoint(), "host:1234");
  EXPECT_EQ(p2p.worker_rank(), 1u);
  EXPECT_EQ(p2p.agent_name(), "agent");
  EXPECT_EQ(p2p.metadata_endpoint(), "10.0.0.1:5555");
  EXPECT_EQ(p2p.accelerator(), "cpu");
  EXPECT_FALSE(p2p.has_tensor_source());
  EXPECT_EQ(p2p.backend_metadata_case(),
            model_express::p2p::WorkerMetadata::BACKEND_METADATA_NOT_SET);

  model_express::p2p::WorkerMetadata central;
  FillCentralizedRecord(*state, &central);
  EXPECT_EQ(central.worker_grpc_endpoint(), "");
  ASSERT_TRUE(central.has_tensor_source());
  ASSERT_EQ(central.tensor_source().tensors_size(), 1);
  EXPECT_EQ(central.tensor_source().tensors(0).addr(), 4096u + 64);
  EXPECT_EQ(central.tensor_source().tensors(0).dtype(), "torch.float16");
  auto decoded = DecodeCentralizedMetadata(central.nixl_metadata());
  ASSERT_TRUE(decoded.ok() && decoded->has_value());
  EXPECT_EQ((*decoded)->mx_source_id(), "src-1");
  EXPECT_EQ((*decoded)->worker_id(), "w-7");
  EXPECT_EQ((*decoded)->total_bytes(), 64u);
}

}  // namespace
}  // namespace ferry::worker
