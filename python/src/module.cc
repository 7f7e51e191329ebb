// ferry._ferry: the compiled half of the `ferry` Python package. The plain-Python layer
// (ferry/__init__.py, ferry/torch.py) wraps it; see python/README section in the top README.
#include <pybind11/pybind11.h>

#include "common/listener_probe.h"
#include "common/logging.h"
#include "convert.h"
#include "status.h"

namespace py = pybind11;

PYBIND11_MODULE(_ferry, m) {
  m.doc() = "ferry's C++ library: identity, metadata client, transfer engine, publish and pull";
  // A publishing engine serves many connections: meet ferry's own bounds before the process's
  // descriptor limit (the soft limit rises to the hard one, as the ferry command does).
  (void)ferry::internal::RaiseOpenFileLimit();
  ferry::python::RegisterErrors(m);
  ferry::python::RegisterClient(m);
  ferry::python::RegisterEngine(m);
  ferry::python::RegisterWeights(m);
  ferry::python::RegisterArtifacts(m);
}
