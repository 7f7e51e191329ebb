// Test support for authentication and TLS tests: a temporary folder, and a CA with server and
// client certificates made with the openssl command (header-only, for tests in any layer).
//
//   TempDir dir;
//   auto certs = MakeTestCerts(dir.path());
//   ASSERT_TRUE(certs.ok()) << certs.status();
//   StartServer({.extra_args = {"--tls-cert", certs->server_cert, ...}});
#ifndef FERRY_COMMON_TESTING_TEST_CERTS_H_
#define FERRY_COMMON_TESTING_TEST_CERTS_H_

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "ferry/status.h"

namespace ferry::testing {

// A folder under /tmp, removed with its contents by the destructor. Thread-compatible.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ferry-it-XXXXXX";
    const char* p = mkdtemp(tmpl);
    path_ = p == nullptr ? std::string("/tmp") : std::string(p);
  }
  ~TempDir() {
    if (path_ != "/tmp") std::filesystem::remove_all(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // Writes `text` to path()/name, replacing the file's contents in place; returns the path.
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::trunc) << text;
    return p;
  }

  // Writes `text` to a new file and renames it over path()/name, as a Kubernetes projected
  // volume or an atomic secret rotation does (the inode changes); returns the path.
  std::string Replace(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    const std::string tmp = p + ".new";
    std::ofstream(tmp, std::ios::trunc) << text;
    std::rename(tmp.c_str(), p.c_str());
    return p;
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct TestCerts {
  std::string ca;           // CA certificate (PEM): --tls-ca, --tls-client-ca
  std::string server_cert;  // for IP:127.0.0.1 and DNS:localhost
  std::string server_key;
  std::string client_cert;  // signed by the same CA: mutual TLS
  std::string client_key;
  std::string other_ca;  // an unrelated CA: a client trusting it must refuse the server
};

// Creates the files of TestCerts in `dir` with the openssl command. Internal error naming the
// step if openssl fails.
inline StatusOr<TestCerts> MakeTestCerts(const std::string& dir) {
  auto openssl = [](const std::string& args) -> Status {
    const std::string cmd = "openssl " + args + " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("test certificates: `", cmd, "` failed"));
    }
    return absl::OkStatus();
  };
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
  for (const char* ca : {"ca", "other-ca"}) {
    FERRY_RETURN_IF_ERROR(
        openssl(absl::StrCat("req -x509 ", ec, " -days 2 -subj /CN=ferry-", ca, " -keyout ", dir,
                             "/", ca, ".key -out ", dir, "/", ca, ".pem")));
  }
  const std::string ext = dir + "/san.ext";
  std::ofstream(ext, std::ios::trunc) << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  for (const char* name : {"server", "client"}) {
    const std::string n = absl::StrCat(dir, "/", name);
    FERRY_RETURN_IF_ERROR(openssl(
        absl::StrCat("req ", ec, " -subj /CN=", name, " -keyout ", n, ".key -out ", n, ".csr")));
    FERRY_RETURN_IF_ERROR(openssl(
        absl::StrCat("x509 -req -in ", n, ".csr -CA ", dir, "/ca.pem -CAkey ", dir,
                     "/ca.key -CAcreateserial -days 2 -extfile ", ext, " -out ", n, ".pem")));
  }
  TestCerts c;
  c.ca = dir + "/ca.pem";
  c.server_cert = dir + "/server.pem";
  c.server_key = dir + "/server.key";
  c.client_cert = dir + "/client.pem";
  c.client_key = dir + "/client.key";
  c.other_ca = dir + "/other-ca.pem";
  return c;
}

}  // namespace ferry::testing

#endif  // FERRY_COMMON_TESTING_TEST_CERTS_H_
