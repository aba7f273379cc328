-- Orthanc: images and other CADs' SRs to the CAD gateway; the gateway's own SRs stay.
function OnStoredInstance(instanceId, tags, metadata, origin)
   if tags['Manufacturer'] ~= 'cad-aift' then
      SendToModality(instanceId, 'cadgw')
   end
end
