# The Debian package: cpack -G DEB in the build tree (docs/operations.md, "Installing").
# It installs what cmake --install does, under the prefix the tree was configured with, so the
# units' ExecStart= and the package agree; configure with -DCMAKE_INSTALL_PREFIX=/usr for a
# package that installs where Debian's own do. Its maintainer scripts create the user, apply
# the udev rules and enable iommud.socket (systemd/debian/).
set(CPACK_PACKAGE_NAME iommud)
set(CPACK_PACKAGE_VENDOR "iommud")
set(CPACK_PACKAGE_CONTACT "iommud maintainers <iommud@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "IOMMU domain daemon for container and VM managers")
set(CPACK_PACKAGE_DESCRIPTION
	"iommud owns IOMMU domains on behalf of other programs: clients allocate DMA domains,\
 attach VFIO devices and map memory through its socket. Includes iommuctl, libiommuctl and\
 the Prometheus exporter.")
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
# The runtime libraries' packages, as dpkg-shlibdeps finds them for the binaries; libiommuctl
# is the package's own.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_BINARY_DIR}/client)
# systemd-sysusers, udevadm and the units' settings (CAP_BPF, ProtectKernelLogs=) need these;
# procps has the /bin/kill of ExecReload=, which a minimal Debian 12 lacks.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd (>= 247), udev, procps")
# The daemon asks systemd over the D-Bus system bus whether a SIGTERM is a restart, which
# leaves the leases' device DMA going; without a bus a restart tears them down as a stop does.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "dbus | dbus-system-bus")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
	${CMAKE_SOURCE_DIR}/systemd/debian/postinst ${CMAKE_SOURCE_DIR}/systemd/debian/prerm
	${CMAKE_SOURCE_DIR}/systemd/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_GENERATOR DEB)
include(CPack)
