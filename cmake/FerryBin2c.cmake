# Embeds a binary file in C++ with the CUDA toolkit's bin2c (script mode):
#   cmake -DBIN2C=<bin2c> -DINPUT=<file> -DOUTPUT=<file.inc> -DNAME=<array> -P FerryBin2c.cmake
# The array is `static const unsigned long long NAME[]` (8-byte aligned, as cuModuleLoadData
# expects; the last word is zero-padded). Fails, and leaves no output, when the input is missing or
# empty or bin2c fails: a build must never embed an empty kernel image.
foreach(var BIN2C INPUT OUTPUT NAME)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "FerryBin2c.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT EXISTS "${INPUT}")
  message(FATAL_ERROR "FerryBin2c.cmake: ${INPUT} does not exist (did nvcc fail?)")
endif()
file(SIZE "${INPUT}" input_size)
if(input_size EQUAL 0)
  message(FATAL_ERROR "FerryBin2c.cmake: ${INPUT} is empty (did nvcc fail?)")
endif()
execute_process(
  COMMAND "${BIN2C}" --const --static --type longlong --name "${NAME}" "${INPUT}"
  OUTPUT_FILE "${OUTPUT}.tmp"
  ERROR_VARIABLE bin2c_error
  RESULT_VARIABLE bin2c_result)
if(NOT bin2c_result EQUAL 0)
  file(REMOVE "${OUTPUT}.tmp")
  message(FATAL_ERROR "FerryBin2c.cmake: ${BIN2C} failed on ${INPUT} (${bin2c_result}): ${bin2c_error}")
endif()
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
