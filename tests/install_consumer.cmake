# Installs a built rewind into a fresh prefix, then configures, builds and runs a separate
# project (tests/consumer) against that prefix alone, the way a user of the package would.
#
# Then it builds the examples the package ships (share/rewind/examples) the same way.
#
#   cmake -DREWIND_BUILD_DIR=<build> -DCONSUMER_SOURCE_DIR=<tests/consumer> -DWORK_DIR=<scratch>
#         [-DCXX_COMPILER=<c++>] [-DBUILD_TYPE=Release] [-DCXX_FLAGS=<flags>] [-DCXX_FLAGS_BUILD_TYPE=<flags>]
#         [-DEXAMPLES=ON|OFF] -P tests/install_consumer.cmake
#
# CXX_FLAGS and CXX_FLAGS_BUILD_TYPE are the build's own CMAKE_CXX_FLAGS and
# CMAKE_CXX_FLAGS_<BUILD_TYPE>, so a sanitizer build's consumer is compiled and linked with the same
# -fsanitize flags and optimisation (a sanitized library needs its runtime in the program), and is
# then checked to carry the sanitizer runtimes itself. Otherwise the consumer is configured with no
# build type, as the README's consumer line is: the package config must then warn and optimise
# (Note [Consumer build type]), and the consumer requires its fused MGU not slower than generic.
# EXAMPLES=OFF (REWIND_BUILD_EXAMPLES=OFF, as
# in scripts/check-sanitizers) is a build that ships no examples: only the consumer is built then.

foreach(variable REWIND_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT ${variable})
    message(FATAL_ERROR "install_consumer: -D${variable}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()

set(prefix ${WORK_DIR}/prefix)
set(consumer_build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run step)
  message(STATUS "install_consumer: ${step}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "install_consumer: ${step} failed (${result})")
  endif()
endfunction()

run(install ${CMAKE_COMMAND} --install ${REWIND_BUILD_DIR} --prefix ${prefix})
if(NOT EXISTS ${prefix}/lib/cmake/rewind/rewindConfig.cmake AND NOT EXISTS ${prefix}/lib64/cmake/rewind/rewindConfig.cmake)
  file(GLOB_RECURSE configs ${prefix}/*/rewindConfig.cmake)
  if(NOT configs)
    message(FATAL_ERROR "install_consumer: no rewindConfig.cmake under ${prefix}")
  endif()
endif()

# Configures and builds `source` in `build` against the prefix alone, and checks that it found
# the installed package, not the build tree.
# `build_type` may be empty: a consumer configured without CMAKE_BUILD_TYPE.
function(build_against_prefix name source build build_type)
  set(configure_args -S ${source} -B ${build}
    -DCMAKE_BUILD_TYPE=${build_type}
    -DCMAKE_PREFIX_PATH=${prefix}
    # Only the fresh prefix may provide rewind: not a user or system package registry.
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
    ${ARGN})
  if(CXX_COMPILER)
    list(APPEND configure_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
  endif()
  if(CXX_FLAGS)
    list(APPEND configure_args "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
  endif()
  if(CXX_FLAGS_BUILD_TYPE AND build_type)
    string(TOUPPER "${build_type}" build_type_upper)
    list(APPEND configure_args "-DCMAKE_CXX_FLAGS_${build_type_upper}=${CXX_FLAGS_BUILD_TYPE}")
  endif()
  message(STATUS "install_consumer: configure ${name}: ${CMAKE_COMMAND} ${configure_args}")
  execute_process(COMMAND ${CMAKE_COMMAND} ${configure_args} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}${err}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "install_consumer: configure ${name} failed (${result})")
  endif()
  if(NOT build_type AND NOT "${err}" MATCHES "rewind: CMAKE_BUILD_TYPE is not set")
    message(FATAL_ERROR "install_consumer: ${name} was configured without a build type and rewind's package did not warn")
  endif()
  file(STRINGS ${build}/CMakeCache.txt rewind_dir REGEX "^rewind_DIR:")
  string(REGEX REPLACE "^rewind_DIR:[A-Z]+=" "" rewind_dir "${rewind_dir}")
  file(REAL_PATH "${rewind_dir}" rewind_dir)
  file(REAL_PATH "${prefix}" real_prefix)
  string(FIND "${rewind_dir}" "${real_prefix}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "install_consumer: ${name} found rewind in ${rewind_dir}, not under ${real_prefix}")
  endif()
  run("build ${name}" ${CMAKE_COMMAND} --build ${build} --parallel 2)
  set(rewind_dir ${rewind_dir} PARENT_SCOPE)
endfunction()

# The example helpers are on the package's include path (<rewind/examples/...>), examples or not.
foreach(helper adding_task.hpp common.hpp mgu_cell.hpp)
  if(NOT EXISTS ${prefix}/include/rewind/examples/${helper})
    message(FATAL_ERROR "install_consumer: ${prefix}/include/rewind/examples/${helper} is not installed")
  endif()
endforeach()
if(CXX_FLAGS MATCHES "-fsanitize")
  build_against_prefix(consumer ${CONSUMER_SOURCE_DIR} ${consumer_build} "${BUILD_TYPE}" -DCONSUMER_TIME_PATHS=OFF)
else()
  build_against_prefix(consumer ${CONSUMER_SOURCE_DIR} ${consumer_build} "")
endif()
# A sanitized library's consumer must link the sanitizer runtimes itself (GCC: libasan, libubsan
# as its own DT_NEEDED entries), not only reach them through librewind.
foreach(sanitizer address:libasan undefined:libubsan thread:libtsan)
  string(REPLACE ":" ";" sanitizer "${sanitizer}")
  list(GET sanitizer 0 name)
  list(GET sanitizer 1 runtime)
  if(CXX_FLAGS MATCHES "-fsanitize=[a-z,]*${name}")
    execute_process(COMMAND readelf -d ${consumer_build}/consumer OUTPUT_VARIABLE dynamic RESULT_VARIABLE result)
    if(NOT result EQUAL 0 OR NOT dynamic MATCHES "NEEDED[^\n]*${runtime}")
      message(FATAL_ERROR "install_consumer: the consumer was built without -fsanitize=${name} (no ${runtime} in readelf -d)")
    endif()
  endif()
endforeach()
run(run ${consumer_build}/consumer)

if(DEFINED EXAMPLES AND NOT EXAMPLES)
  if(EXISTS ${prefix}/share/rewind/examples)
    message(FATAL_ERROR "install_consumer: a build without examples installed ${prefix}/share/rewind/examples")
  endif()
  message(STATUS "install_consumer: passed (rewind from ${rewind_dir}; consumer built with \"${CXX_FLAGS}\"; "
                 "this build ships no examples, REWIND_BUILD_EXAMPLES=OFF)")
  return()
endif()
if(NOT EXISTS ${prefix}/share/rewind/examples/CMakeLists.txt)
  message(FATAL_ERROR "install_consumer: no examples under ${prefix}/share/rewind/examples")
endif()
build_against_prefix(examples ${prefix}/share/rewind/examples ${WORK_DIR}/examples-build "${BUILD_TYPE}")
# The shipped examples run: the demo's gradient check passes.
run("run rewind-demo" ${WORK_DIR}/examples-build/rewind-demo)
message(STATUS "install_consumer: passed (rewind from ${rewind_dir}; consumer and examples built)")
