#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli/cli.h"

namespace ferry::cli {
namespace {

namespace p2p = ::model_express::p2p;
using ::testing::HasSubstr;

TEST(StatusNameTest, ParsesAnyCaseAndListsValidNamesOnError) {
  EXPECT_EQ(*ParseStatusName("ready"), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(*ParseStatusName("READY"), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(*ParseStatusName("Stale"), p2p::SOURCE_STATUS_STALE);
  EXPECT_EQ(*ParseStatusName("unknown"), p2p::SOURCE_STATUS_UNKNOWN);
  EXPECT_EQ(*ParseStatusName("initializing"), p2p::SOURCE_STATUS_INITIALIZING);
  auto bad = ParseStatusName("bogus");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(),
            "'bogus' is not a source status; use one of unknown, initializing, "
            "ready, stale");
}

TEST(StatusNameTest, NamesWithoutPrefix) {
  EXPECT_EQ(StatusName(p2p::SOURCE_STATUS_READY), "READY");
  EXPECT_EQ(StatusName(p2p::SOURCE_STATUS_INITIALIZING), "INITIALIZING");
  EXPECT_EQ(StatusName(42), "42");
}

TEST(FormatTest, UpdatedAtShowsUtcTimeAndAge) {
  const absl::Time now = absl::FromUnixMillis(1700000003500);
  EXPECT_EQ(FormatUpdatedAt(1700000000000, now), "2023-11-14T22:13:20.000Z (3.5s ago)");
  EXPECT_EQ(FormatUpdatedAt(1700000003450, now), "2023-11-14T22:13:23.450Z (just now)");
  EXPECT_EQ(FormatUpdatedAt(1700000000000, now + absl::Seconds(60)),
            "2023-11-14T22:13:20.000Z (1m3s ago)");
  EXPECT_EQ(FormatUpdatedAt(1700000009000, now), "2023-11-14T22:13:29.000Z");  // future
  EXPECT_EQ(FormatUpdatedAt(0, now), "never");
}

TEST(FormatTest, Bytes) {
  EXPECT_EQ(FormatBytes(12), "12 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(131072000), "125.0 MiB");
}

TEST(FormatTest, TableAlignsColumns) {
  EXPECT_EQ(FormatTable({"A", "LONGER"}, {{"xxx", "y"}, {"z", "w"}}, "> "),
            "> A    LONGER\n"
            "> xxx  y\n"
            "> z    w\n");
}

TEST(FormatTest, JsonKeepsProtoFieldNamesAndDefaults) {
  SourceInstanceRef r;
  r.set_mx_source_id("abc");
  r.set_updated_at(5);
  const std::string json = MessageToJson(r, false);
  EXPECT_THAT(json, HasSubstr("\"mx_source_id\":\"abc\""));
  EXPECT_THAT(json, HasSubstr("\"worker_rank\":0"));
  EXPECT_THAT(json, HasSubstr("\"updated_at\":\"5\""));
}

TEST(FormatTest, MetadataListsTensors) {
  GetMetadataResponse resp;
  resp.set_found(true);
  resp.set_mx_source_id("s");
  resp.set_worker_id("w");
  resp.mutable_identity()->set_model_name("m");
  auto* t = resp.mutable_worker()->mutable_tensor_source()->add_tensors();
  t->set_name("lm_head.weight");
  t->set_size(2048);
  t->set_dtype("torch.bfloat16");
  t->set_addr(0x1000);
  const std::string text = FormatMetadata(resp, absl::Now());
  EXPECT_THAT(text, HasSubstr("model_name: \"m\""));
  EXPECT_THAT(text, HasSubstr("tensors               1 (2.0 KiB)"));
  EXPECT_THAT(text, HasSubstr("lm_head.weight  torch.bfloat16  2.0 KiB  0       0x1000"));
}

}  // namespace
}  // namespace ferry::cli
