# Run after a harness binary is linked (harness.cmake): writes one ctest test per case it lists.
# Inputs: binary, name (the test prefix), working_directory, out (the file to write), properties
# (more test properties, "NAME VALUE ...", possibly empty).
execute_process(COMMAND ${binary} --list
	OUTPUT_VARIABLE listed ERROR_VARIABLE errors RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
	message(FATAL_ERROR "${binary} --list failed (${rc}): ${errors}")
endif()
string(REPLACE "\n" ";" cases "${listed}")
set(text "")
foreach(case IN LISTS cases)
	if(case STREQUAL "")
		continue()
	endif()
	string(APPEND text
		"add_test([=[${name}.${case}]=] [=[${binary}]=] [=[${case}]=])\n"
		"set_tests_properties([=[${name}.${case}]=] PROPERTIES SKIP_RETURN_CODE 77 "
		"WORKING_DIRECTORY [=[${working_directory}]=] ${properties})\n")
endforeach()
# Written whole and then moved, so ctest never reads half a list.
file(WRITE ${out}.new "${text}")
file(RENAME ${out}.new ${out})
