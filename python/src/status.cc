#include "status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ferry::python {

namespace py = pybind11;

namespace {

struct ErrorClass {
  absl::StatusCode code;
  const char* name;      // the Python class name
  PyObject* extra_base;  // a builtin it also derives from, or null
  PyObject* type = nullptr;
};

// The classes, filled by RegisterErrors. Module-lifetime objects owned by the module.
ErrorClass kClasses[] = {
    {absl::StatusCode::kInvalidArgument, "InvalidArgumentError", nullptr},
    {absl::StatusCode::kNotFound, "NotFoundError", nullptr},
    {absl::StatusCode::kAlreadyExists, "AlreadyExistsError", nullptr},
    {absl::StatusCode::kFailedPrecondition, "FailedPreconditionError", nullptr},
    {absl::StatusCode::kUnavailable, "UnavailableError", nullptr},
    {absl::StatusCode::kDeadlineExceeded, "DeadlineExceededError", nullptr},
    {absl::StatusCode::kDataLoss, "DataLossError", nullptr},
    {absl::StatusCode::kPermissionDenied, "PermissionDeniedError", nullptr},
    {absl::StatusCode::kUnauthenticated, "UnauthenticatedError", nullptr},
    {absl::StatusCode::kResourceExhausted, "ResourceExhaustedError", nullptr},
    {absl::StatusCode::kCancelled, "CancelledError", nullptr},
    {absl::StatusCode::kAborted, "AbortedError", nullptr},
    {absl::StatusCode::kOutOfRange, "OutOfRangeError", nullptr},
    {absl::StatusCode::kUnimplemented, "UnimplementedError", nullptr},
    {absl::StatusCode::kInternal, "InternalError", nullptr},
};
PyObject* base_error = nullptr;

PyObject* ClassFor(absl::StatusCode code) {
  for (const ErrorClass& c : kClasses) {
    if (c.code == code) return c.type;
  }
  return base_error;
}

std::string CodeName(absl::StatusCode code) {
  std::string name = absl::StatusCodeToString(code);  // "NOT_FOUND"
  return name.empty() ? "UNKNOWN" : name;
}

}  // namespace

void RegisterErrors(py::module_& m) {
  kClasses[0].extra_base = PyExc_ValueError;       // InvalidArgumentError
  kClasses[5].extra_base = PyExc_TimeoutError;     // DeadlineExceededError
  kClasses[7].extra_base = PyExc_PermissionError;  // PermissionDeniedError
  base_error = PyErr_NewExceptionWithDoc(
      "ferry.Error",
      "Base of every error ferry raises. `code` is the status code name (\"NOT_FOUND\"), "
      "`message` the full message (also str(e)).",
      PyExc_Exception, nullptr);
  m.add_object("Error", py::handle(base_error));
  // Class-level `code` (instances raised from C++ also carry it), and `message` as a property,
  // so that errors the plain-Python layer raises have both too.
  py::handle(base_error).attr("code") = "UNKNOWN";
  py::handle(base_error).attr("message") =
      py::module_::import("builtins").attr("property")(py::cpp_function([](py::object self) {
        return py::str(self);
      }));
  for (ErrorClass& c : kClasses) {
    py::tuple bases = c.extra_base != nullptr
                          ? py::make_tuple(py::handle(base_error), py::handle(c.extra_base))
                          : py::make_tuple(py::handle(base_error));
    c.type = PyErr_NewException(absl::StrCat("ferry.", c.name).c_str(), bases.ptr(), nullptr);
    py::handle(c.type).attr("code") = CodeName(c.code);
    m.add_object(c.name, py::handle(c.type));
  }
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      const Status& s = e.status();
      PyObject* type = ClassFor(s.code());
      py::object instance;
      try {
        instance = py::handle(type)(py::str(s.message().data(), s.message().size()));
      } catch (py::error_already_set& e) {
        e.restore();  // building the exception failed: raise that instead
        return;
      }
      PyErr_SetObject(type, instance.ptr());
    }
  });
}

}  // namespace ferry::python
