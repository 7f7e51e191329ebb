// Test support: gMock matchers for absl::Status and absl::StatusOr<T>.
//
//   EXPECT_THAT(s, IsOk());
//   EXPECT_THAT(client->GetMetadata("s", "w"), StatusIs(absl::StatusCode::kNotFound));
//   EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("worker_id")));
//
// The message matcher sees the whole message as a std::string (any string matcher, or a plain
// string for equality). A failure prints the status's code and message, which gtest cannot do
// by itself for a StatusOr.
#ifndef FERRY_COMMON_TESTING_STATUS_MATCHERS_H_
#define FERRY_COMMON_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/base/config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace ferry::testing {
namespace internal_status {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }

template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

// "CODE: message", or "OK".
inline std::string Describe(const absl::Status& status) {
  if (status.ok()) return "OK";
  return std::string(absl::StatusCodeToString(status.code())) + ": " +
         std::string(status.message());
}

// Matches the code and the message of a Status, wherever it comes from.
class StatusIsImpl {
 public:
  StatusIsImpl(::testing::Matcher<absl::StatusCode> code,
               ::testing::Matcher<const std::string&> message)
      : code_(std::move(code)), message_(std::move(message)) {}

  void DescribeTo(std::ostream* os) const {
    *os << "has a status code that ";
    code_.DescribeTo(os);
    *os << ", and a message that ";
    message_.DescribeTo(os);
  }

  void DescribeNegationTo(std::ostream* os) const {
    *os << "has a status code that ";
    code_.DescribeNegationTo(os);
    *os << ", or a message that ";
    message_.DescribeNegationTo(os);
  }

  bool MatchAndExplain(const absl::Status& status, ::testing::MatchResultListener* listener) const {
    *listener << "whose status is " << Describe(status);
    ::testing::StringMatchResultListener inner;
    if (!code_.MatchAndExplain(status.code(), &inner)) {
      *listener << ", and the code " << absl::StatusCodeToString(status.code())
                << " does not match";
      if (!inner.str().empty()) *listener << " (" << inner.str() << ")";
      return false;
    }
    if (!message_.MatchAndExplain(std::string(status.message()), &inner)) {
      *listener << ", and the message does not match";
      if (!inner.str().empty()) *listener << " (" << inner.str() << ")";
      return false;
    }
    return true;
  }

 private:
  const ::testing::Matcher<absl::StatusCode> code_;
  const ::testing::Matcher<const std::string&> message_;
};

// StatusIsImpl for one argument type (Status, StatusOr<T>, or a reference to one).
template <typename StatusType>
class MonoStatusIsMatcher : public ::testing::MatcherInterface<StatusType> {
 public:
  explicit MonoStatusIsMatcher(StatusIsImpl impl) : impl_(std::move(impl)) {}
  void DescribeTo(std::ostream* os) const override { impl_.DescribeTo(os); }
  void DescribeNegationTo(std::ostream* os) const override { impl_.DescribeNegationTo(os); }
  bool MatchAndExplain(StatusType actual, ::testing::MatchResultListener* listener) const override {
    return impl_.MatchAndExplain(GetStatus(actual), listener);
  }

 private:
  const StatusIsImpl impl_;
};

// What StatusIs() returns: converts to a Matcher of whatever type it is applied to.
class StatusIsMatcher {
 public:
  StatusIsMatcher(::testing::Matcher<absl::StatusCode> code,
                  ::testing::Matcher<const std::string&> message)
      : impl_(std::move(code), std::move(message)) {}

  template <typename StatusType>
  operator ::testing::Matcher<StatusType>() const {  // NOLINT: implicit, as gMock's own
    return ::testing::Matcher<StatusType>(
        new MonoStatusIsMatcher<const std::decay_t<StatusType>&>(impl_));
  }

 private:
  const StatusIsImpl impl_;
};

// What IsOk() returns.
class IsOkMatcher {
 public:
  template <typename StatusType>
  operator ::testing::Matcher<StatusType>() const {  // NOLINT: implicit, as gMock's own
    return ::testing::Matcher<StatusType>(new Mono<const std::decay_t<StatusType>&>());
  }

 private:
  template <typename StatusType>
  class Mono : public ::testing::MatcherInterface<StatusType> {
   public:
    void DescribeTo(std::ostream* os) const override { *os << "is OK"; }
    void DescribeNegationTo(std::ostream* os) const override { *os << "is not OK"; }
    bool MatchAndExplain(StatusType actual,
                         ::testing::MatchResultListener* listener) const override {
      const absl::Status& status = GetStatus(actual);
      if (!status.ok()) *listener << "whose status is " << Describe(status);
      return status.ok();
    }
  };
};

}  // namespace internal_status

// Matches a Status or StatusOr whose code matches `code` (a code, or a matcher of codes) and
// whose message matches `message` (a string for equality, or a string matcher).
template <typename CodeMatcher, typename MessageMatcher>
internal_status::StatusIsMatcher StatusIs(CodeMatcher&& code, MessageMatcher&& message) {
  return internal_status::StatusIsMatcher(
      ::testing::MatcherCast<absl::StatusCode>(std::forward<CodeMatcher>(code)),
      ::testing::MatcherCast<const std::string&>(std::forward<MessageMatcher>(message)));
}

// Matches a Status or StatusOr whose code matches `code`, whatever its message.
template <typename CodeMatcher>
internal_status::StatusIsMatcher StatusIs(CodeMatcher&& code) {
  return StatusIs(std::forward<CodeMatcher>(code), ::testing::_);
}

// Matches an OK Status, or a StatusOr that holds a value.
inline internal_status::IsOkMatcher IsOk() { return {}; }

}  // namespace ferry::testing

// gtest prints a value through a PrintTo found by argument-dependent lookup, and abseil gives
// StatusOr one only from its 20230802 release on; without it a failing EXPECT_THAT prints a
// StatusOr as raw bytes. So, for older abseil only, the same printer abseil later added.
#if defined(ABSL_LTS_RELEASE_VERSION) && ABSL_LTS_RELEASE_VERSION < 20230802
namespace absl {
ABSL_NAMESPACE_BEGIN
template <typename T>
void PrintTo(const StatusOr<T>& status_or, std::ostream* os) {
  if (status_or.ok()) {
    *os << ::testing::PrintToString(*status_or);
  } else {
    *os << status_or.status();
  }
}
ABSL_NAMESPACE_END
}  // namespace absl
#endif

#endif  // FERRY_COMMON_TESTING_STATUS_MATCHERS_H_
