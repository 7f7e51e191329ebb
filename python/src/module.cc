// ferry._ferry: the compiled half of the `ferry` Python package. The plain-Python layer
// (ferry/__init__.py, ferry/torch.py) wraps it; see python/README section in the top README.
#include <pybind11/pybind11.h>

#include "common/logging.h"
#include "convert.h"
#include "status.h"

namespace py = pybind11;

PYBIND11_MODULE(_ferry, m) {
  m.doc() = "ferry's C++ library: identity, metadata client, transfer engine, publish and pull";
  ferry::python::RegisterErrors(m);
  ferry::python::RegisterClient(m);
  ferry::python::RegisterEngine(m);
  ferry::python::RegisterWeights(m);
  ferry::python::RegisterArtifacts(m);
}
