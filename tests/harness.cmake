# The harness of the C tests (harness.h) and iommud_harness_tests(), which makes each case of a
# harness binary a ctest test of its own, BINARY.CASE (BINARY.VARIANT.CASE under a fixture with
# variants), each run as `BINARY CASE` with SKIP_RETURN_CODE 77.
#
# The cases are what the binary lists: after each link it runs `BINARY --list` and writes the
# tests into a file that ctest reads through the TEST_INCLUDE_FILES directory property, as
# gtest_discover_tests does; a case added or renamed needs no change here.
add_library(harness STATIC ${CMAKE_CURRENT_LIST_DIR}/harness.c)
target_include_directories(harness PUBLIC ${CMAKE_CURRENT_LIST_DIR})

set(harness_discover_script ${CMAKE_CURRENT_LIST_DIR}/harness-discover.cmake)

# iommud_harness_tests(TARGET [WORKING_DIRECTORY DIR] [PROPERTIES NAME VALUE...]): DIR is where
# each case runs (default: the build directory of the calling CMakeLists.txt); the PROPERTIES
# (values without spaces) are set on every case.
function(iommud_harness_tests target)
	cmake_parse_arguments(arg "" "WORKING_DIRECTORY" "PROPERTIES" ${ARGN})
	string(REPLACE ";" " " properties "${arg_PROPERTIES}")
	set(dir ${CMAKE_CURRENT_BINARY_DIR})
	if(arg_WORKING_DIRECTORY)
		set(dir ${arg_WORKING_DIRECTORY})
	endif()
	target_link_libraries(${target} PRIVATE harness)
	set(cases_file ${CMAKE_CURRENT_BINARY_DIR}/${target}_cases.cmake)
	set(include_file ${CMAKE_CURRENT_BINARY_DIR}/${target}_include.cmake)
	add_custom_command(TARGET ${target} POST_BUILD
		COMMAND ${CMAKE_COMMAND} -D binary=$<TARGET_FILE:${target}> -D name=${target}
			-D working_directory=${dir} -D out=${cases_file} "-D properties=${properties}"
			-P ${harness_discover_script}
		COMMENT "Listing the cases of ${target}"
		VERBATIM)
	# Until the binary is built there is no list: ctest then shows one test that says so.
	file(WRITE ${include_file}
		"if(EXISTS [=[${cases_file}]=])\n"
		"\tinclude([=[${cases_file}]=])\n"
		"else()\n"
		"\tadd_test([=[${target}_NOT_BUILT]=] [=[${target}_NOT_BUILT]=])\n"
		"endif()\n")
	set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${include_file})
endfunction()
