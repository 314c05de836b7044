# ctest helper: run rebirth-run with bad input and check that it fails the way users need:
# exit code EXPECTED_RC (1: bad input, 2: bad usage) and exactly one line on stderr, "error: ..."
# mentioning EXPECTED.
#   cmake -DEMULATOR=a|b -DRUNNER=path -DARGS=x|y -DEXPECTED=text -DEXPECTED_RC=1 -P expect_error.cmake
string(REPLACE "|" ";" emulator "${EMULATOR}")
string(REPLACE "|" ";" args "${ARGS}")
execute_process(COMMAND ${emulator} "${RUNNER}" ${args}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(STRIP "${err}" err)
if(NOT rc EQUAL "${EXPECTED_RC}")
  message(FATAL_ERROR "expected exit code ${EXPECTED_RC}, got ${rc}; stdout: ${out} stderr: ${err}")
endif()
if(NOT err MATCHES "^error: [^\n]+$")
  message(FATAL_ERROR "expected one line 'error: ...' on stderr, got:\n${err}")
endif()
string(FIND "${err}" "${EXPECTED}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the error does not mention '${EXPECTED}': ${err}")
endif()
message(STATUS "rc ${rc}: ${err}")
