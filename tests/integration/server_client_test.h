// A test fixture with a real ferry-server child process and a MetadataClient connected to it.
// TearDown requires the server to still drain and exit 0 on SIGTERM after whatever the test did.
#ifndef FERRY_TESTS_INTEGRATION_SERVER_CLIENT_TEST_H_
#define FERRY_TESTS_INTEGRATION_SERVER_CLIENT_TEST_H_

#include <signal.h>

#include <memory>

#include "ferry/metadata_client.h"
#include "gtest/gtest.h"
#include "server_process.h"

namespace ferry::testing {

class ServerClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = StartServer();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(s).value();
    MetadataClientOptions o;
    o.server_address = server_->address();
    auto c = MetadataClient::Create(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(c).value();
  }

  void TearDown() override {
    if (server_ == nullptr || !server_->running()) return;
    Status stopped = server_->Stop();
    EXPECT_TRUE(stopped.ok()) << stopped;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<MetadataClient> client_;
};

}  // namespace ferry::testing

#endif  // FERRY_TESTS_INTEGRATION_SERVER_CLIENT_TEST_H_
