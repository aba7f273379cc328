-- Orthanc: send every image it stores, never an SR, to the CAD gateway (modality 'cadgw').
function OnStoredInstance(instanceId, tags, metadata, origin)
   if tags['Modality'] ~= 'SR' then
      SendToModality(instanceId, 'cadgw')
   end
end
