// Turning ferry::Status into Python exceptions: the ferry.Error hierarchy, one class per status
// code the caller can act on, each carrying the full message and the code's name.
#ifndef FERRY_PYTHON_STATUS_H_
#define FERRY_PYTHON_STATUS_H_

#include <pybind11/pybind11.h>

#include <utility>

#include "ferry/status.h"

namespace ferry::python {

// A failed Status crossing into Python. Thrown with or without the GIL; the translator that
// RegisterErrors installs turns it into the matching ferry.Error subclass.
class StatusError : public std::exception {
 public:
  explicit StatusError(Status status) : status_(std::move(status)) {}
  const Status& status() const { return status_; }
  const char* what() const noexcept override { return "ferry status error"; }

 private:
  Status status_;
};

// Creates ferry.Error and its subclasses in `m` and installs the exception translator.
void RegisterErrors(pybind11::module_& m);

inline void ThrowIfError(Status status) {
  if (!status.ok()) throw StatusError(std::move(status));
}

template <typename T>
T Unwrap(StatusOr<T> value) {
  if (!value.ok()) throw StatusError(std::move(value).status());
  return *std::move(value);
}

}  // namespace ferry::python

#endif  // FERRY_PYTHON_STATUS_H_
