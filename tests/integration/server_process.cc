#include "server_process.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ferry::testing {

namespace fs = std::filesystem;

std::string BinDir() {
  // Test infrastructure, not ferry configuration: ctest passes the build's bin folder here.
  if (const char* dir = std::getenv("FERRY_BIN_DIR"); dir != nullptr && *dir) {
    return dir;
  }
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return (self.parent_path().parent_path() / "bin").string();
}

std::string BinaryPath(const std::string& name) { return (fs::path(BinDir()) / name).string(); }

int UnusedLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

StatusOr<std::unique_ptr<ServerProcess>> StartServer(ServerProcessOptions options) {
  if (options.binary.empty()) options.binary = BinaryPath("ferry-server");
  if (!options.print_log_tail_on_exit_if) {
    options.print_log_tail_on_exit_if = [] { return ::testing::Test::HasFailure(); };
  }
  return ServerProcess::Create(std::move(options));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

}  // namespace ferry::testing
