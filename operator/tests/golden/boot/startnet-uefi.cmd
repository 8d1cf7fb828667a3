@echo off
rem recast imaging script: store-042/kiosk-01, attempt kiosk-01-7f3a, try 2.
rem Rendered by recast for this try only. It holds no secret: it claims the try first and gets
rem a session token that works only from this machine's address, until the try ends.
rem Needs curl.exe in WinPE (System32 of WinPE from the Windows 11 ADK), diskpart, dism, bcdboot.
setlocal EnableExtensions
rem The protocol's URL: recast's HTTPS listener when the site runs one (the token and the
rem credential files never cross plain HTTP; the kit carries the site's CA at X:\recast\ca.pem).
set "RECAST_URL=http://10.0.40.2:8081/imaging/v1/store-042/kiosk-01/kiosk-01-7f3a/2"
set "RECAST_CURL=curl.exe -s -S --fail --connect-timeout 10 --retry 5 --retry-delay 5 --retry-all-errors"

wpeinit
wpeutil InitializeNetwork

rem --- 0. claim the try: nothing touches the disk unless this machine holds it ------------------
set "RECAST_TOKEN="
for /f "usebackq delims=" %%t in (`%RECAST_CURL% -X POST "%RECAST_URL%/claim?format=text"`) do set "RECAST_TOKEN=%%t"
if not defined RECAST_TOKEN (echo recast: this machine could not claim attempt kiosk-01-7f3a try 2; the disk is untouched & goto :end)
call :report 2 network "WinPE started, network initialised, try claimed"

rem --- 0b. the task and this machine's files, before anything touches the disk -----------------
rem The boot service checks the machine's provisioning when it hands out the task: a profile it
rem cannot serve ends the try here. unattend.xml and agent.json wait in X:\ until Windows is applied.
%RECAST_CURL% -H "Authorization: Bearer %RECAST_TOKEN%" -o X:\recast-task.json "%RECAST_URL%/task" || (echo recast: the boot service refused the task; the disk is untouched & goto :end)
%RECAST_CURL% -H "Authorization: Bearer %RECAST_TOKEN%" -o X:\recast-unattend.xml "%RECAST_URL%/unattend.xml" || (call :fail configure "could not fetch unattend.xml; the disk is untouched" & goto :end)
%RECAST_CURL% -H "Authorization: Bearer %RECAST_TOKEN%" -o X:\recast-agent.json "%RECAST_URL%/agent.json" || (call :fail configure "could not fetch the agent configuration; the disk is untouched" & goto :end)

rem --- 1. partition disk 0 (uefi) ---------------------------------------
call :report 5 partition "partitioning disk 0 for uefi"
> X:\recast-diskpart.txt (
  echo select disk 0
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
diskpart /s X:\recast-diskpart.txt || (call :fail partition "diskpart failed on disk 0" & goto :end)

rem --- 2. download the WIM (resumable) and check its sha256 ------------------------------
call :report 15 download "downloading win11-24h2-2026-01 (5368709120 bytes)"
mkdir W:\recast 2>nul
%RECAST_CURL% -C - -o W:\recast\image.wim "http://10.0.40.2:8081/artifacts/images/3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011.wim" || (call :fail download "could not download http://10.0.40.2:8081/artifacts/images/3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011.wim" & goto :end)
call :report 45 checksum "checking sha256"
certutil -hashfile W:\recast\image.wim SHA256 | findstr /i /x "3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011" >nul || (call :fail checksum "the downloaded WIM does not match sha256 3f1c9a0c6b1e4d7f8a2b5c6d7e8f90112233445566778899aabbccddeeff0011" & goto :end)

rem --- 3. apply it ---------------------------------------------------------------------------
call :report 50 apply "applying image 1 of win11-24h2-2026-01"
dism /Apply-Image /ImageFile:W:\recast\image.wim /Index:1 /ApplyDir:W:\ || (call :fail apply "dism /Apply-Image failed" & goto :end)
del /q W:\recast\image.wim

rem --- 4. make it bootable -------------------------------------------------------------------
call :report 85 bcdboot "writing boot files"
bcdboot W:\Windows /s S: /f UEFI || (call :fail bcdboot "bcdboot failed" & goto :end)

rem --- 5. unattend.xml and the agent's configuration with a fresh credential -----------------
call :report 90 configure "writing unattend.xml and the agent configuration"
mkdir W:\Windows\Panther 2>nul
copy /y X:\recast-unattend.xml W:\Windows\Panther\unattend.xml >nul || (call :fail configure "could not write unattend.xml" & goto :end)
mkdir W:\ProgramData\recast 2>nul
copy /y X:\recast-agent.json W:\ProgramData\recast\agent.json >nul || (call :fail configure "could not write the agent configuration" & goto :end)

rem --- 6. done: report and reboot into the new image -----------------------------------------
%RECAST_CURL% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: application/json" -d "{\"ok\":true}" "%RECAST_URL%/result"
:end
echo recast: rebooting
wpeutil reboot
exit /b 0

:report
rem %1 percent, %2 step, %3 message (quoted)
%RECAST_CURL% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: application/json" -d "{\"percent\":%1,\"step\":\"%2\",\"message\":\"%~3\"}" "%RECAST_URL%/progress" >nul
echo recast: [%1%%] %~3
exit /b 0

:fail
rem %1 step, %2 message (quoted)
echo recast: FAILED at %1: %~2
%RECAST_CURL% -X POST -H "Authorization: Bearer %RECAST_TOKEN%" -H "Content-Type: application/json" -d "{\"ok\":false,\"step\":\"%1\",\"error\":\"%~2\"}" "%RECAST_URL%/result"
exit /b 0
