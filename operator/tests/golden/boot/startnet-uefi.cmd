@echo off
rem recast imaging script: store-042/kiosk-01, attempt kiosk-01-7f3a, try 2.
rem Rendered by recast for this try only. It holds no secret: it claims the try first and gets
rem a session token that works only from this machine's address, until the try ends.
rem Runs in the kit `recastctl bootkit build` made: curl.exe injected, WinPE-WMI for wmic.
rem Same order and safety as recast-imager: nothing is written before the boot service has
rem checked this machine (firmware, identity, the one target disk) in the preflight.
setlocal EnableExtensions
rem The protocol's URL: recast's HTTPS listener when the site runs one (the token and the
rem credential files never cross plain HTTP; the kit carries the site's CA at X:\recast\ca.pem).
set "RECAST_URL=http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2"
rem curl options all exist in curl 7.55 (Windows' own since 1803). GETs and the result (which
rem the boot service takes once, however often it arrives) retry; progress and the preflight
rem are sent once.
set "RECAST_CURL=curl.exe -s -S --fail --connect-timeout 10"
set "RECAST_RETRY=--retry 5 --retry-delay 5 --retry-connrefused"
set "RECAST_GET=%RECAST_CURL% %RECAST_RETRY%"
set "RECAST_TOKEN="

rem --- 0. WinPE's start: winpeshl.ini runs only this script, so wpeinit runs once, here ------
wpeinit
wpeutil WaitForNetwork

rem --- 1. preflight, tools: each must be in this WinPE before anything else happens ---------
for %%t in (curl.exe wbem\WMIC.exe diskpart.exe Dism.exe certutil.exe reg.exe xcopy.exe wpeutil.exe wpeinit.exe) do (
  if not exist "%SystemRoot%\System32\%%t" (echo recast: %%t is not in this WinPE; rebuild the kit with recastctl bootkit build. The disk is untouched. & goto :halt)
)
rem certutil checks the image's sha256 after the wipe: it must work now, not only be there.
certutil -hashfile "%~f0" SHA256 >nul || (echo recast: certutil cannot hash a file in this WinPE; rebuild the kit. The disk is untouched. & goto :halt)

rem --- 2. claim the try: nothing touches the disk unless this machine holds it ---------------
for /f "usebackq delims=" %%t in (`%RECAST_CURL% -X POST "%RECAST_URL%/claim?format=text"`) do set "RECAST_TOKEN=%%t"
if not defined RECAST_TOKEN (echo recast: this machine could not claim attempt kiosk-01-7f3a try 2 from %RECAST_URL%; the disk is untouched & goto :halt)
call :report 2 network "WinPE started, network initialised, try claimed"

rem --- 3. the task and this machine's files, before anything touches the disk ---------------
rem The boot service checks the machine's provisioning when it hands out the task: a profile it
rem cannot serve ends the try here. unattend.xml and agent.json wait in X:\ until Windows is applied.
%RECAST_GET% -H "Authorization: Bearer %RECAST_TOKEN%" -o X:\recast-task.json "%RECAST_URL%/task" || (echo recast: the boot service refused the task; the disk is untouched & goto :halt)
%RECAST_GET% -H "Authorization: Bearer %RECAST_TOKEN%" -o X:\recast-unattend.xml "%RECAST_URL%/unattend.xml" || (call :fail configure "could not fetch unattend.xml; the disk is untouched" & goto :halt)
%RECAST_GET% -H "Authorization: Bearer %RECAST_TOKEN%" -o X:\recast-agent.json "%RECAST_URL%/agent.json" || (call :fail configure "could not fetch the agent configuration; the disk is untouched" & goto :halt)

rem --- 4. preflight, machine: what WinPE sees, judged by the boot service with recast-imager's
rem rules (firmware type = the Endpoint's boot mode, SMBIOS identity, the one target disk by the
rem Endpoint's rule, the model's driver set). The answer is the plan; a refusal ends the try.
rem wmic writes UTF-16 to a file; `type` turns it into text.
> X:\recast-machine.txt echo [firmware]
reg query HKLM\System\CurrentControlSet\Control /v PEFirmwareType >> X:\recast-machine.txt 2>&1
>> X:\recast-machine.txt echo [csproduct]
wmic csproduct get IdentifyingNumber,Name,UUID,Vendor /value > X:\recast-wmic.txt 2>nul
type X:\recast-wmic.txt >> X:\recast-machine.txt
>> X:\recast-machine.txt echo [bios]
wmic bios get SMBIOSMajorVersion,SMBIOSMinorVersion /value > X:\recast-wmic.txt 2>nul
type X:\recast-wmic.txt >> X:\recast-machine.txt
>> X:\recast-machine.txt echo [diskdrive]
wmic diskdrive get Index,InterfaceType,MediaType,Model,SerialNumber,Size /value > X:\recast-wmic.txt 2>nul
type X:\recast-wmic.txt >> X:\recast-machine.txt
%RECAST_CURL% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: text/plain" --data-binary @X:\recast-machine.txt -o X:\recast-plan.txt "%RECAST_URL%/preflight" || (echo recast: the boot service refused this machine in the preflight; nothing was written & goto :halt)
set "RECAST_DISK="
set "RECAST_DRIVERS_URL="
set "RECAST_DRIVERS_SHA256="
for /f "usebackq tokens=1,* delims==" %%a in ("X:\recast-plan.txt") do set "RECAST_%%a=%%b"
if not defined RECAST_DISK (call :fail preflight "the preflight answer names no disk; nothing was written" & goto :halt)

rem --- 5. partition the disk the plan names (uefi) -------------------------------
call :report 5 partition "partitioning disk %RECAST_DISK% for uefi"
> X:\recast-diskpart.txt (
  echo select disk %RECAST_DISK%
  echo online disk noerr
  echo attributes disk clear readonly noerr
  echo clean
  echo convert gpt
  echo create partition efi size=260
  echo format quick fs=fat32 label="System"
  echo assign letter="S"
  echo create partition msr size=16
  echo create partition primary
  echo shrink minimum=1024
  echo format quick fs=ntfs label="Windows"
  echo assign letter="W"
  echo create partition primary
  echo format quick fs=ntfs label="Recovery"
  echo assign letter="R"
  echo set id="de94bba4-06d1-4d40-a16a-bfd50179d6ac"
  echo gpt attributes=0x8000000000000001
  echo list volume
  echo exit
)
diskpart /s X:\recast-diskpart.txt || (call :fail partition "diskpart failed on disk %RECAST_DISK%" & goto :halt)
rem DISM's scratch space on the target, not WinPE's 32 MB RAM disk.
mkdir W:\recast\scratch 2>nul

rem --- 6. download the WIM, resuming where a dropped connection left it, and check its sha256 -
call :report 15 download "downloading win11-24h2-2026-01 (5368709120 bytes)"
set /a RECAST_DOWNLOAD=0
:download
set /a RECAST_DOWNLOAD+=1
%RECAST_CURL% -C - -o W:\recast\image.wim "http://10.0.40.2:8081/artifacts/images/3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011.wim" && goto :downloaded
if %RECAST_DOWNLOAD% GEQ 10 (call :fail download "could not download http://10.0.40.2:8081/artifacts/images/3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011.wim in 10 tries" & goto :halt)
echo recast: the download stopped (try %RECAST_DOWNLOAD% of 10); resuming in 10 s
ping -n 11 127.0.0.1 >nul
goto :download
:downloaded
call :report 45 checksum "checking sha256"
certutil -hashfile W:\recast\image.wim SHA256 | findstr /i /x "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011" >nul || (call :fail checksum "the downloaded WIM does not match sha256 3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011" & goto :halt)

rem --- 7. apply it ----------------------------------------------------------------------------
call :report 50 apply "applying image 1 of win11-24h2-2026-01"
dism /Apply-Image /ImageFile:W:\recast\image.wim /Index:1 /ApplyDir:W:\ /ScratchDir:W:\recast\scratch || (call :fail apply "dism /Apply-Image failed" & goto :halt)
del /q W:\recast\image.wim

rem --- 8. the model's drivers, where unattend.xml points Windows' PnP ------------------------
mkdir W:\recast\drivers 2>nul
if not defined RECAST_DRIVERS_URL goto :drivers_done
call :report 80 drivers "placing this model's driver set"
%RECAST_GET% -o W:\recast\drivers.wim "%RECAST_DRIVERS_URL%" || (call :fail drivers "could not download the driver set %RECAST_DRIVERS_URL%" & goto :halt)
certutil -hashfile W:\recast\drivers.wim SHA256 | findstr /i /x "%RECAST_DRIVERS_SHA256%" >nul || (call :fail drivers "the driver set does not match sha256 %RECAST_DRIVERS_SHA256%" & goto :halt)
dism /Apply-Image /ImageFile:W:\recast\drivers.wim /Index:1 /ApplyDir:W:\recast\drivers /ScratchDir:W:\recast\scratch || (call :fail drivers "dism could not apply the driver set" & goto :halt)
del /q W:\recast\drivers.wim
:drivers_done

rem --- 9. make it bootable with the applied image's own bcdboot (it matches its boot files) --
call :report 85 bcdboot "writing boot files"
W:\Windows\System32\bcdboot.exe W:\Windows /s S: /f UEFI || (call :fail bcdboot "bcdboot failed" & goto :halt)

rem --- 10. Windows RE on the recovery partition ---------------------------------------------
call :report 88 recovery "placing Windows RE on the recovery partition"
if not exist W:\Windows\System32\Recovery\Winre.wim (echo recast: the image has no Winre.wim; Windows RE is not set up & goto :winre_done)
mkdir R:\Recovery\WindowsRE 2>nul
xcopy /h /y W:\Windows\System32\Recovery\Winre.wim R:\Recovery\WindowsRE\ >nul || (call :fail recovery "could not copy Winre.wim to the recovery partition" & goto :halt)
W:\Windows\System32\Reagentc.exe /Setreimage /Path R:\Recovery\WindowsRE /Target W:\Windows || (call :fail recovery "reagentc /setreimage failed" & goto :halt)
:winre_done

rem --- 11. unattend.xml, the agent's configuration, and Setup's clean-up -------------------
call :report 90 configure "writing unattend.xml and the agent configuration"
mkdir W:\Windows\Panther 2>nul
copy /y X:\recast-unattend.xml W:\Windows\Panther\unattend.xml >nul || (call :fail configure "could not write unattend.xml" & goto :halt)
mkdir W:\ProgramData\recast 2>nul
copy /y X:\recast-agent.json W:\ProgramData\recast\agent.json >nul || (call :fail configure "could not write the agent configuration" & goto :halt)
rem recast's lines go first: an image's own SetupComplete.cmd may end with exit.
mkdir W:\Windows\Setup\Scripts 2>nul
> X:\recast-setupcomplete.cmd (
  echo rem recast: Setup is done; its cached answer files hold the join credentials in clear text
  echo del /f /q %%WINDIR%%\Panther\unattend.xml %%WINDIR%%\Panther\unattend-original.xml %%WINDIR%%\Panther\Unattend\unattend.xml 2^>nul
)
if exist W:\Windows\Setup\Scripts\SetupComplete.cmd type W:\Windows\Setup\Scripts\SetupComplete.cmd >> X:\recast-setupcomplete.cmd
copy /y X:\recast-setupcomplete.cmd W:\Windows\Setup\Scripts\SetupComplete.cmd >nul || (call :fail configure "could not write SetupComplete.cmd" & goto :halt)
rmdir /s /q W:\recast\scratch 2>nul

rem --- 12. done: report and reboot into the new image ----------------------------------------
%RECAST_CURL% %RECAST_RETRY% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: application/json" -d "{\"ok\":true}" "%RECAST_URL%/result"
echo recast: done; rebooting into Windows
wpeutil reboot
exit /b 0

:halt
rem A failure stays on screen for 5 minutes (the boot service already has the reason and DISM's
rem log), then the machine reboots: it never waits for a person.
echo recast: rebooting in 5 minutes
ping -n 301 127.0.0.1 >nul
wpeutil reboot
exit /b 1

:report
rem %1 percent, %2 step, %3 message (quoted)
%RECAST_CURL% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: application/json" -d "{\"percent\":%1,\"step\":\"%2\",\"message\":\"%~3\"}" "%RECAST_URL%/progress" >nul
echo recast: [%1%%] %~3
exit /b 0

:fail
rem %1 step, %2 message (quoted). DISM's log goes first: WinPE's RAM disk is gone after the reboot.
echo recast: FAILED at %1: %~2
if exist X:\Windows\Logs\DISM\dism.log %RECAST_CURL% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: text/plain" --data-binary @X:\Windows\Logs\DISM\dism.log "%RECAST_URL%/log?name=dism.log" >nul
%RECAST_CURL% %RECAST_RETRY% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: application/json" -d "{\"ok\":false,\"step\":\"%1\",\"error\":\"%~2\"}" "%RECAST_URL%/result"
exit /b 0
